"""--engine ray and the byte ranges it cuts big exports into: the same shards and manifest as a
local run, byte for byte (a local Ray cluster of two workers on loopback)."""
from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

from preprocess import processor, ranges
from preprocess.formats import detect
from preprocess.pipeline import run

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample"
EXPORTS = Path(__file__).resolve().parent / "fixtures" / "exports"
OPTS = {"session_gap_minutes": 360.0, "sentence_backend": "none", "shard_size": 10000, "mark": ()}


def _joined(path: str, split_bytes: int, opts: dict) -> tuple[int, str, dict]:
    """What --engine ray computes for one file, run in this process: (ranges, part text, stats)."""
    fmt, sha = detect(path), processor.file_sha256(path)
    rg = ranges.plan(path, fmt, split_bytes)
    metas, bodies = zip(*[ranges.scan(path, sha, fmt, opts, a, b, i == 0) for i, (a, b) in enumerate(rg)])
    pre, post, stitcher = ranges.stitch(path, sha, fmt, opts, list(metas))
    names = ranges.names_of(metas)
    done = [ranges.finish(pre[i], bodies[i], names, path, sha, fmt, opts, post if i == len(rg) - 1 else b"")
            for i in range(len(rg))]
    stats = ranges.merged_stats(fmt, sha, path, list(metas), stitcher, [d for _, d in done])
    return len(rg), "".join(t for t, _ in done), stats


def _whole(path: str, opts: dict) -> tuple[str, dict]:
    out = io.StringIO()
    p = processor._FileProcessor(path, processor.file_sha256(path), detect(path), processor.Options(**opts), out)
    p.run()
    return out.getvalue(), p.stats()


@pytest.mark.parametrize("split_bytes", [150, 400, 900])
def test_ranges_join_to_the_whole_file(split_bytes):
    """Every one-room export the readers cut (fixtures with bad lines, CP949, BOM + CRLF, marked
    speakers), cut into ranges of every size, joins to the part text and stats of one reading."""
    files = [str(p) for p in sorted([*EXPORTS.glob("*.txt"), *(SAMPLE / "kakaotalk").glob("*.txt")])
             if detect(p) in ranges.STARTS]
    cut = 0
    for path in files:
        for opts in (OPTS, dict(OPTS, session_gap_minutes=1.0, mark=("한지민",))):
            n, text, stats = _joined(path, split_bytes, opts)
            assert (text, stats) == _whole(path, opts), (path, split_bytes, opts)
            cut += n > 1
    assert cut >= 6     # files really were cut (each counted once per option set)


def test_sessions_are_stitched_across_ranges(tmp_path):
    """A session cut by the cap and spanning ranges: a generated export with short gaps."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("bench_preprocess", ROOT / "bench" / "preprocess.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    path = tmp_path / "big.txt"
    bench.generate_kakao_pc(path, 6000, seed=3)
    n, text, stats = _joined(str(path), 20_000, OPTS)
    assert n > 10 and (text, stats) == _whole(str(path), OPTS)
    assert stats["counts"]["sessions"] > 10


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
             address="local")
    yield ray
    ray.shutdown()


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("shard-*.jsonl"))} | {
        "manifest.json": (folder / "manifest.json").read_bytes()}


def test_ray_engine_writes_the_local_runs_bytes(ray_cluster, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)      # relative input paths, as a user types them: the manifest names them
    inputs = ["data/sample/kakaotalk", "data/sample/chatbotdata-ko", "data/sample/xpersona-ko",
              "data/sample/chitchat-en"]
    local = run(inputs, str(tmp_path / "local"), workers=1, sentence_backend="none", shard_size=3000,
                progress=False)
    # kakao files of ~2.7 KB cut into ~500-byte ranges: the stitching runs on the cluster's tasks
    ray_run = run(inputs, str(tmp_path / "ray"), sentence_backend="none", shard_size=3000, progress=False,
                  engine="ray", split_mb=500 / 2**20)
    assert _files(tmp_path / "local") == _files(tmp_path / "ray")
    assert ray_run["totals"] == local["totals"] and len(local["shards"]) == 5
    # a second run resumes every file from the parts the first wrote, and still writes the same bytes
    again = run(inputs, str(tmp_path / "ray"), sentence_backend="none", shard_size=3000, progress=False,
                engine="ray", split_mb=500 / 2**20)
    assert again["resumed_files"] == len(again["inputs"])
    assert _files(tmp_path / "local") == _files(tmp_path / "ray")


def test_missing_ray_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(SystemExit, match=r"pip install 'dialogbert\[cluster\]'"):
        run([str(SAMPLE / "kakaotalk")], str(tmp_path / "out"), engine="ray", progress=False)
    assert not (tmp_path / "out").exists()


def test_ray_tasks_read_uris_and_cut_them_as_local_files(ray_cluster, tmp_path):
    """Each task opens the URI itself (file:// here; s3:// and the like on a real cluster), the
    byte ranges of a cut export included: the same shards as the local run over the paths."""
    kakao = ROOT / "data" / "sample" / "kakaotalk"
    run([str(kakao)], str(tmp_path / "local"), workers=1, sentence_backend="none", progress=False)
    got = run([kakao.as_uri()], str(tmp_path / "ray"), sentence_backend="none", progress=False,
              engine="ray", split_mb=500 / 2**20)
    assert _files(tmp_path / "local").keys() == _files(tmp_path / "ray").keys()
    assert {k: v for k, v in _files(tmp_path / "local").items() if k != "manifest.json"} == \
        {k: v for k, v in _files(tmp_path / "ray").items() if k != "manifest.json"}
    assert [i["path"] for i in got["inputs"]] == [f"{kakao.as_uri()}/{p.name}" for p in sorted(kakao.glob("*.txt"))]
