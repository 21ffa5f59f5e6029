"""Which files a run reads: the inputs as given, folders walked in a stable order, skipping
hidden entries, our own output folders and README/LICENSE-like files. An input may be a URI
(``s3://bucket/exports/``: preprocess.inputs), its folders walked the same way."""
from __future__ import annotations

import os
import re
from pathlib import Path

from . import inputs
from .processor import PARTS_DIR

# Files that sit beside data in folders and are no export; skipped (and listed) when a folder is walked.
_NOT_DATA = re.compile(r"^(readme|license|licence|notice|copying|authors|changelog)(\.|$)|\.(md|rst)$", re.I)


def _is_our_output(folder: Path, out: Path) -> bool:
    try:
        if folder.resolve() == out:
            return True
    except OSError:
        return False
    # a finished run has both; a killed one may lack the manifest (deleted when a run starts)
    return (folder / PARTS_DIR).is_dir() or ((folder / "manifest.json").is_file() and any(folder.glob("shard-*.jsonl")))


def _uri_files(uri: str) -> list[tuple[str, bool]] | None:
    """(file URI, whether it is data) for a file or folder URI; None when nothing is there."""
    what = inputs.kind(uri)
    if what == "file":
        return [(uri, True)]
    if what != "dir":
        return None
    return [(f, not (any(x.startswith(".") for x in parts) or PARTS_DIR in parts[:-1] or _NOT_DATA.search(parts[-1])))
            for f, parts in inputs.walk(uri)]


def discover(sources: list[str], out: str | os.PathLike) -> tuple[list[str], list[dict], list[str]]:
    """Input files in a stable order (as given; folders walked in sorted order, hidden entries,
    our own output folders and README/LICENSE-like files skipped). Returns (files, failed, skipped)."""
    out_r = Path(out).resolve()
    files, failed, skipped, seen = [], [], [], set()

    def add(p: Path) -> None:
        r = p.resolve()
        if r in seen or out_r in r.parents:
            return
        seen.add(r)
        files.append(str(p))

    for inp in sources:
        if inputs.is_uri(inp):
            try:
                found = _uri_files(inp)
            except OSError as e:
                failed.append({"path": inp, "error": f"{inp}: cannot read: {e}"})
                continue
            if found is None:
                failed.append({"path": inp, "error": f"{inp}: no such file or folder"})
            for f, data in found or ():
                if not data:
                    skipped.append(f)
                elif f not in seen:   # a set: an object-store folder may hold many thousand files
                    seen.add(f)
                    files.append(f)
            continue
        p = Path(inp)
        if p.is_file():
            add(p)
        elif p.is_dir():
            if _is_our_output(p, out_r):
                skipped.append(str(p))
                continue
            for root, dirs, names in os.walk(p):
                root_p = Path(root)
                keep = []
                for d in sorted(dirs):
                    if d.startswith("."):
                        continue
                    if _is_our_output(root_p / d, out_r):
                        skipped.append(str(root_p / d))
                    else:
                        keep.append(d)
                dirs[:] = keep
                for name in sorted(names):
                    if name.startswith("."):
                        continue
                    if _NOT_DATA.search(name):
                        skipped.append(str(root_p / name))
                        continue
                    if (root_p / name).is_file():
                        add(root_p / name)
        else:
            failed.append({"path": str(inp), "error": f"{inp}: no such file or folder"})
    return files, failed, skipped
