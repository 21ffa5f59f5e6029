"""`dialogbert preprocess`: messenger exports -> anonymized, deduplicated conversation shards.

    run(inputs, out, workers=1, session_gap_minutes=360.0, sentence_backend="rules",
        shard_size=10000, resume=True, progress=True, mark_speakers=())
        -> summary dict (also out/manifest.json)

The run in four steps, one module each: discover the input files (discover.py), process each
file into a part file (processor.py; files in parallel with ``workers``), assemble the parts
into deduplicated shards and the manifest (assemble.py), and print the summary (here). Same
inputs and options give the same bytes, with any number of workers. docs/preprocess.md has the
rules and the reasons.

``mark_speakers`` (display names as exported, compared by :func:`speaker_key`): the turns of
those speakers carry ``"marked": true`` in the shards (`dialogbert bot --reply-as`: whose replies
the bot gives). Pseudonyms are per session, so the names are matched while reading; they reach
the workers in memory only and are written nowhere. Such a run reuses no part file (another
run's marks may differ), and its part files are tagged apart from unmarked ones.

The names other modules import from here (detect_lang, content_hash, file_sha256, discover,
speaker_key, PARTS_DIR, run, ...) stay importable from this module.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import sys
import time
from pathlib import Path

from .assemble import assemble, mark_duplicate_files
from .assemble import manifest as build_manifest
from .assemble import manifest_on_disk
from .conversation import (GENERIC_SELF, content_hash, conversation_id, detect_lang, mask_names, speaker_key,
                           system_names)
from .discover import discover
from .processor import (BAD_LINE_EXAMPLES, MAX_MESSAGE_CHARS, MAX_OPEN_SESSIONS, MAX_SESSION_MESSAGES, PARTS_DIR,
                        PARTS_VERSION, Options, _init_worker, code_hash, file_sha256, process_file)
from .schema import atomic_write_text
from .sentences import BACKENDS, DEFAULT_BACKEND

__all__ = ["run", "discover", "process_file", "Options", "PARTS_DIR", "PARTS_VERSION", "BAD_LINE_EXAMPLES",
           "MAX_MESSAGE_CHARS", "MAX_OPEN_SESSIONS", "MAX_SESSION_MESSAGES", "GENERIC_SELF", "code_hash",
           "content_hash", "conversation_id", "detect_lang", "file_sha256", "mask_names", "speaker_key",
           "system_names"]


def _summary_table(m: dict) -> str:
    rows = [("input", "format", "messages", "conversations", "duplicates", "bad lines")]
    for i in m["inputs"]:
        rows.append((i["path"], i["format"], str(i["messages"]), str(i["conversations"]),
                     str(i["duplicates"]), str(i["bad_lines"])))
    for f in m["failed"]:
        rows.append((f["path"], "FAILED", "-", "-", "-", "-"))
    t = m["totals"]
    rows.append(("total", "", str(t["messages"]), str(t["conversations"]), str(t["duplicates"]), str(t["bad_lines"])))
    w = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w[i]) if i < 2 else c.rjust(w[i]) for i, c in enumerate(r)) for r in rows]
    lines.insert(1, "  ".join("-" * x for x in w))
    lines.insert(-1, lines[1])
    drops = ", ".join(f"{k} {v}" for k, v in m["drops"].items()) or "none"
    pii = ", ".join(f"{k} {v}" for k, v in m["pii"].items()) or "none"
    lines += [f"dropped: {drops}", f"placeholders: {pii}",
              f"shards: {len(m['shards'])} in {m['out']}"]
    return "\n".join(lines)


def run(inputs: list[str], out: str, workers: int = 1, session_gap_minutes: float = 360.0,
        sentence_backend: str = DEFAULT_BACKEND, shard_size: int = 10000, resume: bool = True,
        progress: bool = True, mark_speakers=(), engine: str = "local", ray_address: str | None = None,
        split_mb: float | None = None) -> dict:
    """Preprocess ``inputs`` (files or folders) into ``out``; returns the manifest as a dict
    (``summary["failed"]`` lists the inputs that could not be read, with the reason). The turns
    of ``mark_speakers`` (display names) carry ``"marked": true``; such a run does not resume.
    ``engine="ray"`` runs the files (big exports cut at message boundaries, above ``split_mb``)
    as Ray tasks, on the cluster at ``ray_address`` / RAY_ADDRESS or a local one: same output."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    if sentence_backend not in BACKENDS:
        raise ValueError(f"sentence_backend={sentence_backend!r}: choose one of {', '.join(BACKENDS)}")
    if not session_gap_minutes > 0:
        raise ValueError(f"session_gap_minutes={session_gap_minutes}: must be > 0 (minutes of silence)")
    if engine not in ("local", "ray"):
        raise ValueError(f"engine={engine!r}: choose local or ray")
    if engine == "ray":
        from .cluster import SPLIT_BYTES, import_ray, run_jobs
        import_ray()            # before anything is written: a missing extra is a clear error
    if shard_size < 1 or workers < 1:
        raise ValueError(f"shard_size={shard_size}, workers={workers}: both must be >= 1")
    if isinstance(mark_speakers, str):
        mark_speakers = [mark_speakers]
    mark = tuple(sorted({speaker_key(n) for n in mark_speakers} - {""}))
    opts = Options(float(session_gap_minutes), sentence_backend, int(shard_size), mark)
    out_p = Path(out)
    out_p.mkdir(parents=True, exist_ok=True)
    parts_dir = out_p / PARTS_DIR
    if (not resume or mark) and parts_dir.exists():
        shutil.rmtree(parts_dir)
    parts_dir.mkdir(exist_ok=True)
    for stale in [*parts_dir.glob(".*.tmp-*"), *out_p.glob(".shard-*.jsonl.tmp-*")]:   # left by a killed run
        stale.unlink()
    (out_p / "manifest.json").unlink(missing_ok=True)   # no manifest = the folder is not complete

    files, failed, skipped = discover(list(inputs), out_p)
    for f in failed:
        print(f"dialogbert preprocess: {f['error']}", file=sys.stderr)
    if skipped:
        print(f"dialogbert preprocess: skipped {len(skipped)} non-data file(s): {', '.join(skipped[:5])}", file=sys.stderr)
    jobs = [(path, str(parts_dir), {"session_gap_minutes": opts.session_gap_minutes,
                                    "sentence_backend": opts.sentence_backend,
                                    "shard_size": opts.shard_size, "mark": opts.mark}) for path in files]
    t0 = time.perf_counter()
    if engine == "ray":
        split = SPLIT_BYTES if split_mb is None else max(1, int(split_mb * 2**20))
        results = run_jobs(jobs, ray_address, split)
        for r in results.values():
            _announce(r, lambda s: print(s, file=sys.stderr))
    else:
        results = _run_local(jobs, workers, progress)
    elapsed = time.perf_counter() - t0

    # input order, not completion order: the output must not depend on scheduling
    ordered = [results[p] for p in files]
    mark_duplicate_files(ordered, failed)
    shards, dups = assemble(out_p, parts_dir, ordered, opts)

    manifest = build_manifest(ordered, failed, skipped, shards, dups, opts)
    atomic_write_text(out_p / "manifest.json", json.dumps(manifest_on_disk(manifest), ensure_ascii=False, indent=1) + "\n")
    summary = dict(manifest, out=str(out_p), seconds=round(elapsed, 3),
                   resumed_files=sum(1 for r in ordered if r.get("resumed")))
    print(_summary_table(summary), flush=True)
    return summary


def _announce(r: dict, say) -> None:
    """A finished file's error, or the first of its bad lines (new ones only), on stderr."""
    if "error" in r:
        say(f"dialogbert preprocess: {r['error']}")
    for ex in r.get("bad_line_examples", [])[:5]:
        if not r.get("resumed"):
            say(f"dialogbert preprocess: warning: {ex}")


def _run_local(jobs: list[tuple], workers: int, progress: bool) -> dict[str, dict]:
    """The jobs in this machine's processes (a spawn pool when workers > 1), with a progress bar
    and warnings as files finish; returns each file's result by path."""
    results: dict[str, dict] = {}

    bar = None
    if progress and jobs:
        from tqdm import tqdm
        bar = tqdm(total=len(jobs), unit="file", desc="preprocess", file=sys.stderr, dynamic_ncols=True)

    def done(r: dict, counter) -> None:
        results[r["path"]] = r
        _announce(r, (lambda s: bar.write(s, file=sys.stderr)) if bar is not None else (lambda s: print(s, file=sys.stderr)))
        if bar is not None:
            bar.update(1)
            bar.set_postfix_str(f"{counter.value if counter else 0:,} messages", refresh=True)

    ctx = mp.get_context("spawn")      # spawn everywhere: no fork of a process holding kss or locks
    counter = ctx.Value("q", 0) if bar is not None else None
    if workers == 1 or len(jobs) <= 1:
        last = [0.0]

        def hook() -> None:
            now = time.monotonic()
            if now - last[0] > 0.2:
                last[0] = now
                bar.set_postfix_str(f"{counter.value:,} messages", refresh=True)

        _init_worker(counter, hook if bar is not None else None)
        try:
            for job in jobs:
                if bar is not None:
                    bar.set_description_str(f"preprocess {Path(job[0]).name[:30]}")
                done(process_file(job), counter)
        finally:
            _init_worker(None)
    else:
        with ctx.Pool(min(workers, len(jobs)), initializer=_init_worker, initargs=(counter,)) as pool:
            pending = [pool.apply_async(process_file, (job,)) for job in jobs]
            while pending:
                still = []
                for a in pending:
                    if a.ready():
                        done(a.get(), counter)
                    else:
                        still.append(a)
                pending = still
                if pending:
                    if bar is not None:
                        bar.set_postfix_str(f"{counter.value:,} messages", refresh=True)
                    time.sleep(0.1)
    if bar is not None:
        bar.close()
    return results
