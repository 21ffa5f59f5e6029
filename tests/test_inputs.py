"""Inputs given as URIs (preprocess.inputs): read through fsspec, processed exactly as local files."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import fsspec
import pytest

from preprocess.inputs import is_uri, label
from preprocess.pipeline import discover, run

ROOT = Path(__file__).resolve().parents[1]
KAKAO = ROOT / "data" / "sample" / "kakaotalk"


def _shards(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("shard-*.jsonl"))}


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text("utf-8"))


@pytest.fixture
def memory_exports():
    """The sample exports in fsspec's in-memory filesystem (one of them gzipped, one README beside
    them, one hidden file), as an object store would hold them."""
    fs = fsspec.filesystem("memory")
    for p in sorted(KAKAO.glob("*.txt")):
        data = p.read_bytes()
        if p.name.startswith("line"):
            fs.pipe(f"/exports/{p.name}.gz", gzip.compress(data, mtime=0))
        else:
            fs.pipe(f"/exports/{p.name}", data)
    fs.pipe("/exports/README.md", b"# my chats\n")
    fs.pipe("/exports/.hidden.txt", b"x")
    yield "memory://exports"
    fs.rm("/exports", recursive=True)


def test_uris_are_told_from_paths():
    assert is_uri("s3://bucket/x.txt") and is_uri("file:///tmp/x") and is_uri("memory://a")
    assert not is_uri("/tmp/x.txt") and not is_uri("C:\\chats\\x.txt") and not is_uri("data/sample")


def test_a_folder_uri_gives_the_shards_of_the_local_folder(memory_exports, tmp_path):
    local = run([str(KAKAO)], str(tmp_path / "local"), workers=1, sentence_backend="none", progress=False)
    remote = run([memory_exports], str(tmp_path / "remote"), workers=1, sentence_backend="none", progress=False)
    assert _shards(tmp_path / "local") == _shards(tmp_path / "remote") and _shards(tmp_path / "local")
    assert remote["totals"] == local["totals"]
    paths = [i["path"] for i in _manifest(tmp_path / "remote")["inputs"]]
    assert paths == ["memory://exports/kakaotalk_android_ko.txt", "memory://exports/kakaotalk_pc_ko.txt",
                     "memory://exports/line_mobile_ko.txt.gz"]
    files, failed, skipped = discover([memory_exports], tmp_path / "o")
    assert files == paths and not failed and sorted(skipped) == ["memory://exports/.hidden.txt",
                                                                 "memory://exports/README.md"]
    # a second run resumes every file from its parts (keyed by the content's sha256)
    again = run([memory_exports], str(tmp_path / "remote"), workers=1, sentence_backend="none", progress=False)
    assert again["resumed_files"] == 3 and _shards(tmp_path / "remote") == _shards(tmp_path / "local")


def test_file_uris_read_the_same_bytes(tmp_path):
    files = sorted(KAKAO.glob("*.txt"))
    local = run([str(f) for f in files], str(tmp_path / "local"), workers=1, sentence_backend="none", progress=False)
    uris = run([f.as_uri() for f in files], str(tmp_path / "uri"), workers=1, sentence_backend="none", progress=False)
    assert _shards(tmp_path / "local") == _shards(tmp_path / "uri") and uris["totals"] == local["totals"]


def test_missing_and_unknown_uris_are_named(memory_exports, tmp_path):
    out = run([memory_exports + "/nothing.txt", "nosuchscheme://x/y.txt", memory_exports + "/kakaotalk_pc_ko.txt"],
              str(tmp_path / "out"), workers=1, sentence_backend="none", progress=False)
    errors = {f["path"]: f["error"] for f in out["failed"]}
    assert errors["memory://exports/nothing.txt"] == "memory://exports/nothing.txt: no such file or folder"
    assert errors["nosuchscheme://x/y.txt"].startswith("nosuchscheme://x/y.txt: cannot read:")
    assert [i["path"] for i in out["inputs"]] == ["memory://exports/kakaotalk_pc_ko.txt"]


@pytest.mark.parametrize("path,written", [
    ("exports/KakaoTalk_Chat_김민준_2024-02-09-19-32-15.txt", "exports/KakaoTalk_Chat_[NAME]_2024-02-09-19-32-15.txt"),
    ("/in/KakaoTalk_20240301_1000_00_000_박영우 소마.txt", "/in/KakaoTalk_20240301_1000_00_000_[NAME].txt"),
    ("KakaoTalk Chats with Jane Doe (4 people)-1.txt", "KakaoTalk Chats with [NAME] (4 people)-1.txt"),
    ("홍길동 님과 카카오톡 대화.txt", "[NAME] 님과 카카오톡 대화.txt"),
    ("가족 (4명)과 카카오톡 대화-1.txt", "[NAME] (4명)과 카카오톡 대화-1.txt"),
    ("[LINE] Chat with Tom.txt", "[LINE] Chat with [NAME].txt"),
    ("[LINE] Chat history in Family.txt", "[LINE] Chat history in [NAME].txt"),
    ("[LINE] 홍길동님과의 대화.txt", "[LINE] [NAME]님과의 대화.txt"),
    ("[LINE] 山田とのトーク.txt", "[LINE] [NAME]とのトーク.txt"),
    ("s3://bucket/KakaoTalk_Chat_A B_2024-01-01.txt", "s3://bucket/KakaoTalk_Chat_[NAME]_2024-01-01.txt"),
    ("KakaoTalk_Chat_철수_2024-01-01/messages.csv", "KakaoTalk_Chat_[NAME]_2024-01-01/messages.csv"),
    # no room's name in these: unchanged
    ("Talk_2023.3.23 02:10-1.txt", "Talk_2023.3.23 02:10-1.txt"),
    ("data/sample/kakaotalk/kakao_pc.txt", "data/sample/kakaotalk/kakao_pc.txt"),
    ("memory://exports/KakaoTalk_Chat_.txt", "memory://exports/KakaoTalk_Chat_.txt"),
])
def test_an_exports_room_name_is_masked_where_its_path_is_written(path, written):
    assert label(path) == written
