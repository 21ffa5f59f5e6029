"""Assembly, in the main process and deterministic: part files in input order -> shards, the
first copy of each session kept (content hash, across files too), then the manifest's counts."""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from . import processor
from .processor import Options
from .schema import SCHEMA_VERSION

class _ShardWriter:
    """Streams conversation lines into shard-NNNNN.jsonl files of ``size`` lines each; every
    shard goes to a temporary name first and is renamed when complete (memory: one line)."""

    def __init__(self, out: Path, size: int):
        self.out, self.size = out, size
        self.shards: list[dict] = []
        self.f = None
        self.tmp: Path | None = None
        self.n = 0

    def write(self, line: str) -> None:
        if self.f is None:
            self.tmp = self.out / f".shard-{len(self.shards):05d}.jsonl.tmp-{os.getpid()}"
            self.f = open(self.tmp, "w", encoding="utf-8")
        self.f.write(line)
        self.n += 1
        if self.n >= self.size:
            self.close()

    def close(self) -> None:
        if self.f is None:
            return
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        name = f"shard-{len(self.shards):05d}.jsonl"
        os.replace(self.tmp, self.out / name)
        self.shards.append({"file": name, "conversations": self.n})
        self.f, self.tmp, self.n = None, None, 0


def assemble(out: Path, parts_dir: Path, results: list[dict], opts: Options) -> tuple[list[dict], Counter]:
    """Part files -> shard-NNNNN.jsonl, in input order, first copy of each session kept."""
    seen: set[bytes] = set()
    dups: Counter = Counter()
    writer = _ShardWriter(out, opts.shard_size)
    try:
        for r in results:
            if "error" in r or r.get("duplicate_of"):
                continue
            part = parts_dir / f"{r['sha256']}-{opts.parts_tag()}.jsonl"
            with open(part, encoding="utf-8") as f:
                for line in f:
                    h, _, js = line.partition("\t")
                    d = bytes.fromhex(h)
                    if d in seen:
                        dups[r["path"]] += 1
                        continue
                    seen.add(d)
                    writer.write(js)
        writer.close()
    finally:
        if writer.tmp is not None and writer.tmp.exists():
            writer.f.close()
            writer.tmp.unlink()
    keep = {s["file"] for s in writer.shards}
    for old in out.glob("shard-*.jsonl"):
        if old.name not in keep:
            old.unlink()
    return writer.shards, dups


def mark_duplicate_files(ordered: list[dict], failed: list[dict]) -> None:
    """Files that failed join ``failed``; a file whose bytes an earlier input already had gets
    ``duplicate_of`` (its sessions are not assembled twice)."""
    first_by_sha: dict[str, str] = {}
    for r in ordered:
        if "error" in r:
            failed.append({"path": r["path"], "error": r["error"]})
            continue
        if r["sha256"] in first_by_sha:
            r["duplicate_of"] = first_by_sha[r["sha256"]]
        else:
            first_by_sha[r["sha256"]] = r["path"]


def manifest(ordered: list[dict], failed: list[dict], skipped: list[str], shards: list[dict], dups: Counter,
             opts: Options) -> dict:
    """manifest.json's content: the options, totals, drops and placeholders summed over the files
    (a duplicate file's counts once), one entry per input, the failed and skipped ones, the shards."""
    totals, drops, pii, media = Counter(), Counter(), Counter(), Counter()
    inputs_m = []
    for r in ordered:
        if "error" in r:
            continue
        cnt = Counter(r["counts"])
        entry = {"path": r["path"], "sha256": r["sha256"], "format": r["format"],
                 "messages": cnt["messages"], "sessions": cnt["sessions"],
                 "conversations": 0 if r.get("duplicate_of") else cnt["conversations"] - dups[r["path"]],
                 "duplicates": dups[r["path"]], "bad_lines": cnt["bad_lines"],
                 "drops": r["drops"], "bad_line_examples": r["bad_line_examples"]}
        if r.get("duplicate_of"):
            entry["duplicate_of"] = r["duplicate_of"]
            entry["duplicates"] = cnt["conversations"]
        inputs_m.append(entry)
        totals.update(messages=cnt["messages"], sessions=cnt["sessions"], bad_lines=cnt["bad_lines"],
                      sessions_capped=cnt["sessions_capped"], duplicates=entry["duplicates"],
                      conversations=entry["conversations"])
        if not r.get("duplicate_of"):
            totals["turns"] += cnt["turns"]
            drops.update(r["drops"])
            pii.update(r["pii"])
            media.update(r["media"])
    drops["duplicate"] += totals["duplicates"]
    totals["files"] = len(inputs_m)
    totals["failed"] = len(failed)
    return {
        "schema_version": SCHEMA_VERSION,
        "options": {"session_gap_minutes": opts.session_gap_minutes, "sentence_backend": opts.sentence_backend,
                    "shard_size": opts.shard_size, "max_session_messages": processor.MAX_SESSION_MESSAGES,
                    "max_message_chars": processor.MAX_MESSAGE_CHARS, "parts_version": processor.PARTS_VERSION},
        "totals": {k: totals[k] for k in ("files", "failed", "messages", "sessions", "conversations",
                                          "turns", "duplicates", "bad_lines", "sessions_capped")},
        "drops": {k: v for k, v in sorted(drops.items()) if v},
        "media": dict(sorted(media.items())),
        "pii": dict(sorted(pii.items())),
        "inputs": inputs_m,
        "failed": failed,
        "skipped": skipped,
        "shards": shards,
    }


def manifest_on_disk(m: dict) -> dict:
    """The manifest as written: each input named as :func:`preprocess.inputs.label` names it (an
    export's file name holds the room's name, often a person's), in its entry, its bad-line
    examples, a duplicate's original, the failed and the skipped files. The run's summary, shown
    on the terminal only, keeps the paths as given."""
    from .inputs import label, labelled

    entries = []
    for e in m["inputs"]:
        e = dict(e, path=label(e["path"]), bad_line_examples=labelled(e["bad_line_examples"], e["path"]))
        if "duplicate_of" in e:
            e["duplicate_of"] = label(e["duplicate_of"])
        entries.append(e)
    return dict(m, inputs=entries, failed=[{"path": label(f["path"]), "error": labelled([f["error"]], f["path"])[0]}
                                           for f in m["failed"]],
                skipped=[label(x) for x in m["skipped"]])
