"""`dialogbert bot`'s input side: the user's exports found, their speakers checked against
``--reply-as``, read by the preprocessor into anonymized shards, and every trace of the input
paths (which often name a person) removed from what is written; on ``--add``, the conversations the
bot already holds dropped. Apart from dialogbert.mybot, which builds and serves the bot from the
shards: this part knows files and names, that one indexes and measures."""
from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

from dialogbert.mybot_report import relabel
from preprocess.schema import atomic_write_text


def export_files(exports: Sequence[str], out: Path) -> tuple[list[str], list[str]]:
    """(files, skipped) as `dialogbert preprocess` would read them; a missing input is an error."""
    from preprocess.pipeline import discover
    if not exports:
        raise ValueError("give the exports to read: dialogbert bot EXPORT... --out DIR")
    files, failed, skipped = discover(list(exports), out)
    if failed:
        raise FileNotFoundError("; ".join(f["error"] for f in failed)
                                + ": check the path (a KakaoTalk or LINE export .txt/.csv, or a folder of them)")
    if not files:
        raise FileNotFoundError(f"{', '.join(exports)}: no export files found there")
    return files, skipped


def speakers_in(files: Iterable[str]) -> Counter:
    """Display name -> messages, over the files that can be read (the rest fail later, in
    preprocessing, with the reason). For the terminal only: these are real names."""
    from preprocess.formats import BadLine, FormatError, detect, iter_messages
    names: Counter = Counter()
    for path in files:
        try:
            for item in iter_messages(path, detect(path)):
                if not isinstance(item, BadLine) and not item.system and item.speaker:
                    names[item.speaker] += 1
        except (FormatError, UnicodeDecodeError, OSError):
            continue
    return names


def check_names(reply_as: Sequence[str], files: list[str]) -> dict[str, int]:
    """Messages of each --reply-as name; an error listing the speakers when one matches nobody."""
    from preprocess.pipeline import speaker_key
    seen = speakers_in(files)
    by_key: Counter = Counter()
    for name, n in seen.items():
        by_key[speaker_key(name)] += n
    found = {name: by_key[speaker_key(name)] for name in reply_as}
    missing = [name for name, n in found.items() if n == 0]
    if missing:
        listed = ", ".join(f"{name} ({n})" for name, n in seen.most_common(30)) or "none"
        raise ValueError(f"--reply-as {', '.join(repr(m) for m in missing)}: nobody of that name writes in "
                         f"{', '.join(files)}. The speakers there (messages), shown here and written nowhere: "
                         f"{listed}. Pass a name exactly as the export shows it (the exporting user is "
                         f"'회원님' or 'You' in most exports)")
    return found


def preprocess_exports(files: list[str], shards: Path, reply_as: Sequence[str], workers: int, progress: bool) -> tuple[dict, dict]:
    """preprocess.pipeline.run, then every trace of the input paths removed from ``shards``.
    Returns (summary, labels: path -> "export N")."""
    from preprocess.pipeline import PARTS_DIR, run
    labels = {path: f"export {i}" for i, path in enumerate(files, 1)}
    summary = None
    try:
        summary = run(files, str(shards), workers=workers, resume=not reply_as, progress=progress,
                      mark_speakers=reply_as)
    finally:
        shutil.rmtree(shards / PARTS_DIR, ignore_errors=True)  # its markers name the inputs
        if summary is not None:     # a failed run writes no manifest
            scrub_manifest(shards / "manifest.json", summary, labels)
    if summary.get("failed"):
        raise ValueError("cannot read " + "; ".join(f["error"] for f in summary["failed"])
                         + " (see `dialogbert preprocess --help` for the formats read)")
    return summary, labels


def scrub_manifest(path: Path, summary: dict, labels: dict[str, str]) -> None:
    """The manifest with ``export N`` for each input (file names often hold a name). Its entries
    are in the order of ``summary``'s (the run's, with the paths as given), which say which is which."""
    if not path.is_file():
        return
    m = json.loads(path.read_text("utf-8"))
    for entry, given in zip(m.get("inputs", []), summary["inputs"]):
        entry["path"] = labels.get(given["path"], "export")
        if "duplicate_of" in entry:
            entry["duplicate_of"] = labels.get(given.get("duplicate_of"), "export")
        entry["bad_line_examples"] = [relabel(x, labels) for x in given.get("bad_line_examples", [])]
    m["failed"] = [{"path": labels.get(f["path"], "input"), "error": relabel(f["error"], labels)}
                   for f in summary.get("failed", [])]
    m["skipped"] = [f"skipped file {i}" for i, _ in enumerate(m.get("skipped", []), 1)]
    atomic_write_text(path, json.dumps(m, ensure_ascii=False, indent=1) + "\n")


def drop_known(shards: Path, known: set[str], summary: dict) -> int:
    """Remove from ``shards`` the conversations the bot already has (by content, as the
    preprocessor deduplicates within a run: a re-export of a chat that grew), counted as
    duplicates in its manifest and in ``summary`` (run()'s). Returns how many were removed."""
    from preprocess.pipeline import content_hash
    manifest = json.loads((shards / "manifest.json").read_text("utf-8"))
    # shard lines are in input order, each input's conversations together: the i-th input owns
    # the next inputs[i]["conversations"] lines
    owners = [i for i, entry in enumerate(summary["inputs"]) for _ in range(entry["conversations"])]
    removed_by = Counter()
    removed_in: dict[str, int] = {}
    pos = 0
    for shard in summary["shards"]:
        kept = []
        with open(shards / shard["file"], encoding="utf-8") as fh:
            for line in fh:
                if not line.strip():
                    continue
                owner = owners[pos] if pos < len(owners) else None
                pos += 1
                if content_hash(json.loads(line)["turns"]) in known:
                    removed_by[owner] += 1
                    removed_in[shard["file"]] = removed_in.get(shard["file"], 0) + 1
                    continue
                kept.append(line if line.endswith("\n") else line + "\n")
        if shard["file"] in removed_in:
            atomic_write_text(shards / shard["file"], "".join(kept))
    removed = sum(removed_by.values())
    if removed:
        for m in (manifest, summary):
            for i, n in removed_by.items():
                if i is not None:
                    m["inputs"][i]["conversations"] -= n
                    m["inputs"][i]["duplicates"] += n
            for shard in m["shards"]:
                shard["conversations"] -= removed_in.get(shard["file"], 0)
            m["totals"]["conversations"] -= removed
            m["totals"]["duplicates"] += removed
            m["drops"]["duplicate"] = m["drops"].get("duplicate", 0) + removed
        atomic_write_text(shards / "manifest.json", json.dumps(manifest, ensure_ascii=False, indent=1) + "\n")
    return removed
