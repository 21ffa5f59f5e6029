"""`dialogbert preprocess --engine ray`: the per-file processing as Ray tasks on a cluster.

Each file is one task, except a big one-room export, which preprocess.ranges cuts into byte
ranges (one task each) and joins again; the part files and markers are written here, by the
driver, so workers only need to read the inputs (the same paths on every node) and the output
is the local run's, byte for byte. ``ray.init(address)`` joins a running cluster (RAY_ADDRESS
or ``ray_address``) or starts a local one. docs/preprocess.md says why Ray.
"""
from __future__ import annotations

import os
from pathlib import Path

from . import inputs, ranges
from .formats import FormatError, detect
from .processor import (Options, _FileProcessor, check_read, commit_part, failure, file_sha256, part_paths,
                        resumed)

SPLIT_BYTES = 64 << 20     # a one-room export bigger than this is cut into ranges of about this size
INSTALL = "pip install 'dialogbert[cluster]'   (or: pip install ray)"


def import_ray():
    """ray, or an error that says how to install it (it is an optional extra)."""
    try:
        import ray
    except ImportError:
        raise SystemExit(f"--engine ray needs Ray, which is not installed: {INSTALL}") from None
    return ray


def _sha(path: str) -> str | dict:
    try:
        return file_sha256(path)
    except OSError as e:
        return {"path": path, "error": f"{path}: cannot read: {e.strerror or e}"}


def _whole(path: str, sha: str, fmt: str, opts_dict: dict) -> tuple[dict, str]:
    """One uncut file: (its stats or the error, its part text)."""
    import io
    out = io.StringIO()
    proc = None
    try:
        proc = _FileProcessor(path, sha, fmt, Options(**opts_dict), out)
        proc.run()
        stats = proc.stats()
        check_read(path, fmt, stats)
        return stats, out.getvalue()
    except Exception as e:   # noqa: BLE001 - named in the manifest, as in a local run
        return failure(path, e, proc.last_line if proc else 0), ""


def _plan(path: str, sha: str, opts: Options, parts_dir: Path, split_bytes: int):
    """(stats of an earlier run, None, None) | (None, fmt, ranges) | (error, None, None)."""
    done = resumed(path, parts_dir, sha, opts)
    if done is not None:
        return done, None, None
    try:
        if inputs.size(path) == 0:
            raise FormatError(path, "empty file")
        fmt = detect(path)
        return None, fmt, ranges.plan(path, fmt, split_bytes)
    except Exception as e:   # noqa: BLE001
        return failure(path, e), None, None


def run_jobs(jobs: list[tuple], ray_address: str | None = None, split_bytes: int = SPLIT_BYTES,
             ) -> dict[str, dict]:
    """The same jobs as pipeline.run's local pool, as Ray tasks; returns each file's result."""
    ray = import_ray()
    if not ray.is_initialized():
        ray.init(address=ray_address, include_dashboard=False, log_to_driver=False)
    sha_t, whole_t = ray.remote(_sha), ray.remote(_whole)
    scan_t, finish_t = ray.remote(num_returns=2)(ranges.scan), ray.remote(ranges.finish)
    results: dict[str, dict] = {}
    shas = dict(zip([j[0] for j in jobs], ray.get([sha_t.remote(j[0]) for j in jobs])))
    work = []    # (path, parts_dir, opts, fmt, sha, whole ref | [(meta ref, body ref), ...])
    for path, parts_dir, opts_dict in jobs:
        sha, opts, parts_dir = shas[path], Options(**opts_dict), Path(parts_dir)
        if isinstance(sha, dict):
            results[path] = sha
            continue
        known, fmt, rg = _plan(path, sha, opts, parts_dir, split_bytes)
        if known is not None:
            results[path] = known
        elif len(rg) == 1:
            work.append((path, parts_dir, opts_dict, fmt, sha, whole_t.remote(path, sha, fmt, opts_dict)))
        else:
            refs = [scan_t.remote(path, sha, fmt, opts_dict, a, b, i == 0) for i, (a, b) in enumerate(rg)]
            work.append((path, parts_dir, opts_dict, fmt, sha, refs))
    for path, parts_dir, opts_dict, fmt, sha, refs in work:
        try:
            if isinstance(refs, list):
                stats, texts = _join(ray, finish_t, path, sha, fmt, opts_dict, refs)
            else:
                stats, text = ray.get(refs)
                texts = [text]
            if "error" not in stats:
                _commit(parts_dir, Options(**opts_dict), stats, texts, path)
                stats.update(path=path, resumed=False)
        except Exception as e:   # noqa: BLE001 - a failed task names its file, as in a local run
            stats = failure(path, e)
        results[path] = stats
    return results


def _join(ray, finish_t, path, sha, fmt, opts_dict, refs) -> tuple[dict, list[str]]:
    """A cut file's ranges: stitch the sessions across them, anonymize each range as a task."""
    metas = ray.get([m for m, _ in refs])
    pre, post, stitcher = ranges.stitch(path, sha, fmt, opts_dict, metas)
    names = ray.put(ranges.names_of(metas))
    last = len(refs) - 1
    done = ray.get([finish_t.remote(pre[i], body, names, path, sha, fmt, opts_dict, post if i == last else b"")
                    for i, (_, body) in enumerate(refs)])
    stats = ranges.merged_stats(fmt, sha, path, metas, stitcher, [f for _, f in done])
    check_read(path, fmt, stats)
    return stats, [t for t, _ in done]


def _commit(parts_dir: Path, opts: Options, stats: dict, texts: list[str], path: str) -> None:
    part, _ = part_paths(parts_dir, stats["sha256"], opts)
    tmp = part.with_name(f".{part.name}.tmp-{os.getpid()}")
    try:
        ranges.write_part(texts, tmp)
        commit_part(tmp, parts_dir, opts, stats, path)
    finally:
        if tmp.exists():
            tmp.unlink()
