"""Where the preprocessor's inputs are read from: local paths, or URIs of any filesystem that
fsspec knows (``s3://bucket/exports/``, ``gs://``, ``hdfs://``, ``abfs://``, ``file://``,
``memory://``, ...). A cluster run (``--engine ray``) hands the URI to each task, which reads it
where it runs, so no node needs the files on its own disk. fsspec comes with torch; the remote
protocols need their own package on every node (s3fs for ``s3://``, gcsfs for ``gs://``, pyarrow
for ``hdfs://``), and fsspec's error names it when it is missing. Outputs stay local paths.

Every input read goes through here: ``open_binary`` (seekable, for the sniffing, the sha256 and
the byte ranges of a split export), ``size``, and ``walk`` (a folder's files, as ``discover``
walks a local folder).
"""
from __future__ import annotations

import os
import re
from typing import IO

_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")


def is_uri(path) -> bool:
    """``scheme://...`` (not a Windows drive such as ``C:\\``)."""
    return bool(_SCHEME.match(str(path)))


def _fs(uri: str):
    import fsspec
    try:
        return fsspec.core.url_to_fs(uri)
    except (ImportError, ValueError) as e:   # an unknown protocol, or its package not installed
        raise OSError(f"{uri}: {e}") from None


def open_binary(path) -> IO[bytes]:
    """The input opened for reading bytes (seekable)."""
    if not is_uri(path):
        return open(path, "rb")
    fs, p = _fs(str(path))
    return fs.open(p, "rb")


def size(path) -> int:
    if not is_uri(path):
        return os.path.getsize(path)
    fs, p = _fs(str(path))
    return int(fs.size(p))


def kind(path) -> str | None:
    """"file", "dir" or None (not there)."""
    if not is_uri(path):
        return "file" if os.path.isfile(path) else "dir" if os.path.isdir(path) else None
    fs, p = _fs(str(path))
    try:
        return "file" if fs.isfile(p) else "dir" if fs.isdir(p) else None
    except OSError:
        return None


def walk(uri: str) -> list[tuple[str, list[str]]]:
    """A folder URI's files in sorted order, each as (its URI, written as ``uri`` + its relative
    path; the parts of that relative path)."""
    fs, root = _fs(uri)
    root = root.rstrip("/")
    out = []
    for p in sorted(fs.find(root)):
        rel = p[len(root):].lstrip("/").split("/")
        out.append((uri.rstrip("/") + "/" + "/".join(rel), rel))
    return out
