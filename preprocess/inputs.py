"""Where the preprocessor's inputs are read from: local paths, or URIs of any filesystem that
fsspec knows (``s3://bucket/exports/``, ``gs://``, ``hdfs://``, ``abfs://``, ``file://``,
``memory://``, ...). A cluster run (``--engine ray``) hands the URI to each task, which reads it
where it runs, so no node needs the files on its own disk. fsspec comes with torch; the remote
protocols need their own package on every node (s3fs for ``s3://``, gcsfs for ``gs://``, pyarrow
for ``hdfs://``), and fsspec's error names it when it is missing. Outputs stay local paths.

Every input read goes through here: ``open_binary`` (seekable, for the sniffing, the sha256 and
the byte ranges of a split export), ``size``, and ``walk`` (a folder's files, as ``discover``
walks a local folder). ``label``: an input's path as written to disk (the room's name masked).
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


# How the apps name an export (file or folder): the room's name, which for a one-to-one chat is the
# other person's display name, sits between a fixed head and tail (docs/preprocess.md lists them).
_EXPORT_NAMES = tuple(re.compile(p) for p in (
    r"^(KakaoTalk_Chat_)(.+?)(_\d{4}-\d{2}-\d{2}.*)$",                       # PC: KakaoTalk_Chat_<room>_2024-02-09-19-32-15.txt
    r"^(KakaoTalk_\d{8}_\d{4}_\d{2}_\d{3}_)(.+?)((?:\.\w+)?)$",               # mobile: KakaoTalk_20240301_1000_00_000_<room>.txt
    r"^(KakaoTalk Chats with )(.+?)((?: \(\d+ people\))?(?:-\d+)?(?:\.\w+)?)$",
    r"^()(.+?)((?: 님과| ?\(\d+명\)과|과|와) 카카오톡 대화(?:-\d+)?(?:\.\w+)?)$",
    r"^(\[LINE\] Chat (?:history )?(?:with|in) )(.+?)((?:\.\w+)?)$",
    r"^(\[LINE\] )(.+?)((?:님과의 대화|과의 대화|とのトーク(?:履歴)?|的聊天記錄)(?:\.\w+)?)$",
))


def label(path) -> str:
    """``path`` as the manifest and the part markers name it: every part of it (folder or file)
    named as KakaoTalk or LINE name an export has the room's name, often a person's, replaced by
    ``[NAME]`` (``exports/KakaoTalk_Chat_[NAME]_2024-02-09.txt``). Other names stay as they are."""
    text = str(path)
    head = _SCHEME.match(text)
    start = head.end() if head else 0
    parts = re.split(r"([/\\])", text[start:])
    for i in range(0, len(parts), 2):
        for p in _EXPORT_NAMES:
            m = p.match(parts[i])
            if m is not None:
                parts[i] = f"{m.group(1)}[NAME]{m.group(3)}"
                break
    return text[:start] + "".join(parts)


def labelled(texts: list[str], path) -> list[str]:
    """``texts`` (bad-line examples, error messages) with ``path`` written as :func:`label` writes it."""
    path = str(path)
    named = label(path)
    return texts if named == path else [t.replace(path, named) for t in texts]
