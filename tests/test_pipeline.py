"""`dialogbert preprocess` end to end: real files in, shards and manifest out.

Fast by design (sentence_backend "none"/"punct"; one small test of the default backend).
Exports of the other formats come from tests/fixtures/exports/ once their readers land.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from dialogbert.cli import main as cli_main
from preprocess import formats, pipeline, processor
from preprocess.formats import Message
from preprocess.pipeline import run, system_names
from preprocess.schema import parse_line, read_shards

ROOT = Path(__file__).resolve().parents[1]
EXPORTS = Path(__file__).resolve().parent / "fixtures" / "exports"


def write_jsonl(path: Path, convs: list[tuple[str, list[tuple[str, str]]]]) -> Path:
    """Our own JSONL: one conversation a line, turns (speaker, text)."""
    with open(path, "w", encoding="utf-8") as f:
        for cid, turns in convs:
            f.write(json.dumps({"id": cid, "turns": [{"speaker": s, "text": t} for s, t in turns]},
                               ensure_ascii=False) + "\n")
    return path


def shard_bytes(out: Path) -> dict[str, bytes]:
    files = sorted(out.glob("shard-*.jsonl")) + [out / "manifest.json"]
    return {p.name: p.read_bytes() for p in files}


def conversations(out: Path):
    return list(read_shards(out))


def chat(n: int, tag: str = "") -> list[tuple[str, list[tuple[str, str]]]]:
    return [(f"{tag}c{i}", [("김민준", f"안녕 {tag}{i}번 대화야"), ("이지수", f"응 반가워 {i} {tag}"),
                            ("김민준", f"오늘 뭐해 {i}{tag}?")]) for i in range(n)]


# ----------------------------------------------------------------------------- a timed reader
# The JSONL reader has no times and no system lines; this one stands in for a messenger export
# so that gap, system and media rules can be tested without waiting for the other readers.

T0 = datetime(2024, 3, 1, 9, 0)


@pytest.fixture
def timed_reader(monkeypatch):
    scripts: dict[str, list[Message]] = {}

    def detect(path):
        if str(path) in scripts:
            return "timed-test"
        return formats.detect(path)

    def iter_messages(path, fmt=None):
        if str(path) in scripts:
            yield from scripts[str(path)]
        else:
            yield from formats.iter_messages(path, fmt)

    monkeypatch.setattr(processor, "detect", detect)
    monkeypatch.setattr(processor, "iter_messages", iter_messages)

    def make(path: Path, rows: list[tuple]) -> str:
        """rows: (minutes after T0 or None, speaker or None for a system line, text[, conv])."""
        path.write_text("timed test input\n" + repr(rows), encoding="utf-8")   # content -> sha256
        msgs = []
        for i, row in enumerate(rows, 1):
            minutes, speaker, text = row[:3]
            conv = row[3] if len(row) > 3 else ""
            t = None if minutes is None else T0 + timedelta(minutes=minutes)
            msgs.append(Message(conv, speaker, text, t, i, system=speaker is None))
        scripts[str(path)] = msgs
        return str(path)
    return make


# ----------------------------------------------------------------------------- behaviour

def test_turns_merge_consecutive_messages_and_pseudonyms(tmp_path):
    src = write_jsonl(tmp_path / "a.jsonl", [("c1", [
        ("박영우 소마", "안녕"), ("박영우 소마", "뭐해?"), ("최수빈", "집이야\n너는?"), ("박영우 소마", "나도")])])
    s = run([str(src)], str(tmp_path / "out"), sentence_backend="none", progress=False)
    assert s["failed"] == []
    [conv] = conversations(tmp_path / "out")
    assert [(t.speaker, t.text) for t in conv.turns] == [
        ("S1", "안녕\n뭐해?"), ("S2", "집이야\n너는?"), ("S1", "나도")]
    assert conv.turns[0].sentences == ["안녕", "뭐해?"]
    assert conv.lang == "ko" and conv.source == "jsonl" and len(conv.id) == 16


def test_session_split_on_gap_and_drops_by_reason(tmp_path, timed_reader):
    rows = [(0, "민준", "안녕"), (1, "지수", "안녕하세요"), (2, "민준", "사진"),        # media
            (3, None, "민준님이 지수님을 초대했습니다."),                               # system
            (4, "지수", "\u200b  "),                                                    # empty
            (5, "민준", "ㅋㅋㅋㅋㅋ 좋아"),
            # 7 hours of silence: a new session, one speaker only -> dropped
            (425, "민준", "자니?"), (426, "민준", "자는구나"),
            # 7 hours again: a third session, kept
            (850, "지수", "굿모닝"), (851, "민준", "좋은 아침")]
    p = timed_reader(tmp_path / "timed.txt", rows)
    s = run([p], str(tmp_path / "out"), sentence_backend="none", progress=False)
    convs = conversations(tmp_path / "out")
    assert [[(t.speaker, t.text) for t in c.turns] for c in convs] == [
        [("S1", "안녕"), ("S2", "안녕하세요"), ("S1", "ㅋㅋ 좋아")],
        [("S1", "굿모닝"), ("S2", "좋은 아침")]]
    assert convs[0].turns[0].time == "2024-03-01T09:00:00"
    assert s["drops"] == {"empty_message": 1, "media": 1, "one_speaker": 1, "system": 1}
    assert s["media"] == {"photo": 1}
    assert s["totals"]["sessions"] == 3 and s["totals"]["conversations"] == 2

    # a gap of 12 hours keeps it all in one session
    s = run([p], str(tmp_path / "out12"), session_gap_minutes=720, sentence_backend="none", progress=False)
    assert s["totals"]["sessions"] == 1 and s["drops"].get("one_speaker") is None


def test_names_from_system_lines_are_masked_and_untimed_keys_are_one_session(tmp_path, timed_reader):
    rows = [(None, None, "김민준님이 이지수님과 박서연님을 초대했습니다.", "room"),
            (None, "김민준", "박서연 오면 말해줘", "room"),
            (None, "이지수", "김민준 알았어", "room"),
            (None, "박서연", "왔어", "other room"),
            (None, "이지수", "안녕", "other room")]
    p = timed_reader(tmp_path / "names.txt", rows)
    run([p], str(tmp_path / "out"), sentence_backend="none", progress=False)
    convs = conversations(tmp_path / "out")
    assert [[t.text for t in c.turns] for c in convs] == [["[NAME] 오면 말해줘", "[NAME] 알았어"], ["왔어", "안녕"]]
    assert system_names("A invited B, C and D.") == ["A", "B", "C", "D"]
    assert system_names("김민준/94/늑대님이 나갔습니다.") == ["김민준/94/늑대"]


def test_overlong_session_is_cut(tmp_path, timed_reader, monkeypatch):
    monkeypatch.setattr(processor, "MAX_SESSION_MESSAGES", 4)
    rows = [(i, "AB"[i % 2], f"메시지 {i}") for i in range(10)]
    s = run([timed_reader(tmp_path / "long.txt", rows)], str(tmp_path / "out"), sentence_backend="none",
            progress=False)
    assert [len(c.turns) for c in conversations(tmp_path / "out")] == [4, 4, 2]
    assert s["totals"]["sessions_capped"] == 2


def test_dedup_within_the_run_across_files(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", chat(3, "x") + [("again", chat(1, "x")[0][1])])   # one repeat inside a
    b = write_jsonl(tmp_path / "b.jsonl", [("other-id", chat(2, "x")[1][1])] + chat(2, "y"))   # one repeat of a
    c = tmp_path / "c.jsonl"
    c.write_bytes(a.read_bytes())                                             # a byte-identical copy
    s = run([str(a), str(b), str(c)], str(tmp_path / "out"), sentence_backend="none", progress=False)
    texts = [tuple(t.text for t in conv.turns) for conv in conversations(tmp_path / "out")]
    assert len(texts) == len(set(texts)) == 5
    by_path = {i["path"]: i for i in s["inputs"]}
    assert by_path[str(a)]["duplicates"] == 1 and by_path[str(a)]["conversations"] == 3
    assert by_path[str(b)]["duplicates"] == 1 and by_path[str(b)]["conversations"] == 2
    assert by_path[str(c)]["duplicate_of"] == str(a) and by_path[str(c)]["conversations"] == 0
    assert s["drops"]["duplicate"] == s["totals"]["duplicates"] == 6


def test_same_input_same_bytes_any_workers_and_shard_size(tmp_path):
    files = [str(write_jsonl(tmp_path / f"in{i}.jsonl", chat(40, f"f{i}-"))) for i in range(3)]
    s1 = run(files, str(tmp_path / "o1"), shard_size=25, sentence_backend="none", progress=False)
    run(files, str(tmp_path / "o2"), shard_size=25, sentence_backend="none", progress=False)
    s3 = run(files, str(tmp_path / "o3"), shard_size=25, workers=2, sentence_backend="none", progress=True)
    b1 = shard_bytes(tmp_path / "o1")
    assert len(b1) == 6 and [x["conversations"] for x in s1["shards"]] == [25, 25, 25, 25, 20]
    assert b1 == shard_bytes(tmp_path / "o2") == shard_bytes(tmp_path / "o3")
    assert s3["totals"] == s1["totals"]
    ids = [c.id for c in conversations(tmp_path / "o1")]
    assert len(set(ids)) == 120
    # rerunning over a finished folder reuses every file and rewrites the same bytes
    s4 = run(files, str(tmp_path / "o1"), shard_size=25, sentence_backend="none", progress=False)
    assert s4["resumed_files"] == 3 and shard_bytes(tmp_path / "o1") == b1
    # fewer shards on a rerun: the stale ones go
    run(files, str(tmp_path / "o1"), shard_size=1000, sentence_backend="none", progress=False)
    assert sorted(p.name for p in (tmp_path / "o1").glob("shard-*")) == ["shard-00000.jsonl"]


def test_folders_skip_hidden_files_docs_and_our_own_outputs(tmp_path):
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    write_jsonl(data / "sub" / "a.jsonl", chat(2))
    write_jsonl(data / ".hidden.jsonl", chat(2, "h"))
    (data / "README.md").write_text("# what is here\n", encoding="utf-8")
    run([str(data)], str(data / "shards"), sentence_backend="none", progress=False)      # out inside the input
    s = run([str(data)], str(tmp_path / "elsewhere"), sentence_backend="none", progress=False)
    assert [i["path"] for i in s["inputs"]] == [str(data / "sub" / "a.jsonl")]
    assert s["failed"] == [] and set(s["skipped"]) == {str(data / "README.md"), str(data / "shards")}


def test_resume_after_kill_gives_the_uninterrupted_bytes(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(24):
        write_jsonl(src / f"f{i:02d}.jsonl", chat(250, f"k{i}-"))
    out = tmp_path / "killed"
    args = ["preprocess", str(src), "--out", str(out), "--sentence-backend", "none", "--shard-size", "5000"]
    proc = subprocess.Popen([sys.executable, "-m", "dialogbert.cli", *args, "--quiet"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not list((out / ".parts").glob("*.done.json")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_at_kill = len(list((out / ".parts").glob("*.done.json")))
    assert not (out / "manifest.json").exists(), "the run finished before it was killed: make it longer"
    assert 1 <= done_at_kill < 24

    assert cli_main(args) == 0                    # the same command again (with a progress bar): resumes
    manifest = json.loads((out / "manifest.json").read_text("utf-8"))
    assert manifest["totals"]["conversations"] == 24 * 250
    assert not list((out / ".parts").glob(".*.tmp-*"))
    fresh = run([str(src)], str(tmp_path / "fresh"), sentence_backend="none", shard_size=5000, progress=False)
    assert fresh["resumed_files"] == 0
    assert shard_bytes(out) == shard_bytes(tmp_path / "fresh")


def test_bad_inputs_are_named_and_the_rest_is_processed(tmp_path, capsys):
    good = write_jsonl(tmp_path / "good.jsonl", chat(3))
    (tmp_path / "binary.dat").write_bytes(bytes(range(256)) * 10)
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("장보기: 우유, 계란\n내일 10시 회의\n", encoding="utf-8")
    with open(tmp_path / "truncated.jsonl", "w", encoding="utf-8") as f:     # one good line, one cut off
        f.write(json.dumps({"id": "t", "turns": [{"speaker": "A", "text": "hi"}, {"speaker": "B", "text": "yo"}]}) + "\n")
        f.write('{"id": "u", "turns": [{"speaker": "A", "te\n')
    out = tmp_path / "out"
    rc = cli_main(["preprocess", str(tmp_path), "--out", str(out), "--sentence-backend", "none", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1
    m = json.loads((out / "manifest.json").read_text("utf-8"))
    failed = {Path(f["path"]).name: f["error"] for f in m["failed"]}
    assert set(failed) == {"binary.dat", "empty.txt", "notes.txt"}
    for name, error in failed.items():
        assert name in error and name in err
    assert "empty" in failed["empty.txt"]
    by_name = {Path(i["path"]).name: i for i in m["inputs"]}
    assert by_name["good.jsonl"]["conversations"] == 3 and by_name["truncated.jsonl"]["conversations"] == 1
    assert by_name["truncated.jsonl"]["bad_lines"] == 1
    assert "truncated.jsonl:2:" in by_name["truncated.jsonl"]["bad_line_examples"][0]
    assert "truncated.jsonl:2:" in err
    assert m["totals"]["conversations"] == 4 and m["totals"]["failed"] == 3
    assert [p.name for p in out.glob(".*")] == [".parts"]
    assert not list((out / ".parts").glob(".*"))
    # a missing input is a failure too, and the CLI says so
    assert cli_main(["preprocess", str(good), str(tmp_path / "nope.txt"), "--out", str(out), "--quiet",
                     "--sentence-backend", "none"]) == 1


def test_wrong_encoding_and_a_huge_line(tmp_path):
    cp949 = tmp_path / "cp949.jsonl"
    cp949.write_bytes(json.dumps({"id": "x", "turns": [{"speaker": "가", "text": "안녕"}]},
                                 ensure_ascii=False).encode("cp949") + b"\n")
    huge = write_jsonl(tmp_path / "huge.jsonl", chat(2) + [("big", [("A", "가" * 10_000_000), ("B", "응")]),
                                                           ("long", [("A", "나" * 50_000), ("B", "응")])])
    s = run([str(cp949), str(huge)], str(tmp_path / "out"), sentence_backend="none", progress=False)
    if s["failed"]:                      # the readers may decode CP949; if not, the file is named
        assert [Path(f["path"]).name for f in s["failed"]] == ["cp949.jsonl"]
        assert "cp949.jsonl" in s["failed"][0]["error"]
    huge_entry = next(i for i in s["inputs"] if i["path"] == str(huge))
    assert huge_entry["conversations"] == 2 and huge_entry["drops"]["overlong_message"] == 1
    # the 10 MB line: a bad line named by file and line, or (a reader that reads it) an overlong message
    assert huge_entry["bad_lines"] == 1 and "huge.jsonl:3:" in huge_entry["bad_line_examples"][0] \
        or huge_entry["drops"]["overlong_message"] == 2
    assert all(len(t.text) < 1000 for c in conversations(tmp_path / "out") for t in c.turns)


def test_no_planted_pii_reaches_the_shards(tmp_path):
    src = write_jsonl(tmp_path / "pii.jsonl", [("p", [
        ("김민준", "내 번호 010-1234-5678 이야"), ("이지수", "메일은 jisu.lee@example.com 로 보내줘"),
        ("김민준", "민준이 폰은 010 9876 5432"), ("이지수", "ok")])])
    s = run([str(src)], str(tmp_path / "out"), sentence_backend="none", progress=False)
    text = "".join(p.read_text("utf-8") for p in (tmp_path / "out").glob("shard-*.jsonl"))
    for pii in ("010-1234-5678", "jisu.lee@example.com", "9876", "김민준", "이지수"):
        assert pii not in text
    assert s["pii"].get("[PHONE]", 0) >= 2 and s["pii"].get("[EMAIL]", 0) >= 1


def test_default_sentence_backend_splits_long_turns(tmp_path):
    src = write_jsonl(tmp_path / "s.jsonl", [("s", [
        ("A", "흥미로워. 나의 가족은 내가 어렸을 때 말 농장을 가지고 있었어."), ("B", "정말? 멋지다")])])
    run([str(src)], str(tmp_path / "out"), progress=False)        # the default backend
    [conv] = conversations(tmp_path / "out")
    assert conv.turns[0].sentences == ["흥미로워.", "나의 가족은 내가 어렸을 때 말 농장을 가지고 있었어."]
    assert conv.turns[1].sentences == ["정말?", "멋지다"]


@pytest.mark.skipif(not EXPORTS.is_dir() or len(formats.FORMATS) < 2,
                    reason="the export readers and their fixtures have not landed yet")
def test_fixture_exports(tmp_path):
    files = sorted(p for p in EXPORTS.rglob("*") if p.is_file() and not p.name.startswith("."))
    readable = []
    for p in files:
        try:
            formats.detect(p)
            readable.append(p)
        except Exception:   # noqa: BLE001 - fixtures of bad files are allowed
            pass
    assert readable
    s = run([str(p) for p in readable], str(tmp_path / "out"), sentence_backend="none", progress=False)
    assert s["totals"]["conversations"] > 0
    raw_names = set()
    for p in readable:
        for m in formats.iter_messages(p, formats.detect(p)):
            if isinstance(m, Message) and m.speaker and not m.system:
                raw_names.add(m.speaker)
    for shard in (tmp_path / "out").glob("shard-*.jsonl"):
        for n, line in enumerate(shard.read_text("utf-8").splitlines(), 1):
            conv = parse_line(line, shard, n)
            assert {t.speaker for t in conv.turns} <= {f"S{i}" for i in range(1, 100)}
            for t in conv.turns:
                assert t.sentences and t.text and "\r" not in t.text
                for name in raw_names:
                    if len(name) >= 3 and name.casefold() not in pipeline.GENERIC_SELF:
                        assert name not in t.text, (shard.name, n, name)


def test_bad_lines_are_reported_without_their_content(tmp_path, capsys):
    """A broken line may hold personal data: the manifest, the part markers and stderr name the
    file, the line and the reason, never the line's text."""
    with open(tmp_path / "broken.jsonl", "w", encoding="utf-8") as f:
        f.write(json.dumps({"id": "t", "turns": [{"speaker": "A", "text": "hi"}, {"speaker": "B", "text": "yo"}]}) + "\n")
        f.write('{"id": "u", "turns": [{"speaker": "김민준", "text": "내 번호 010-2345-6789 이야\n')
    out = tmp_path / "out"
    cli_main(["preprocess", str(tmp_path / "broken.jsonl"), "--out", str(out), "--sentence-backend", "none", "--quiet"])
    err = capsys.readouterr().err
    written = err + "".join(p.read_text("utf-8", errors="replace") for p in out.rglob("*") if p.is_file())
    manifest = (out / "manifest.json").read_text("utf-8")
    assert "broken.jsonl:2:" in manifest
    for secret in ("010-2345-6789", "2345", "김민준"):
        assert secret not in written, secret


def test_export_file_names_are_written_without_the_rooms_name(tmp_path, capsys):
    """KakaoTalk and LINE name an export after its room, for a one-to-one chat the other person:
    the manifest and the part markers write such a path with the room's name masked (the entry, its
    bad-line examples, a duplicate's original, a failed file); the terminal and the returned summary
    keep the paths as given, for the user who ran it."""
    room = tmp_path / "KakaoTalk_Chat_홍길동_2024-02-09-19-32-15"
    room.mkdir()
    with open(room / "messages.jsonl", "w", encoding="utf-8") as f:
        f.write(json.dumps({"id": "t", "turns": [{"speaker": "A", "text": "hi"}, {"speaker": "B", "text": "yo"}]}) + "\n")
        f.write('{"id": "u", "turns": [\n')
    (tmp_path / "[LINE] Chat with Jane Doe.txt").write_bytes(b"")                      # fails: empty
    copy = tmp_path / "KakaoTalk Chats with Jane Doe (2 people)-1.jsonl"               # a duplicate file
    copy.write_bytes((room / "messages.jsonl").read_bytes())
    out = tmp_path / "out"
    summary = run([str(room), str(tmp_path / "[LINE] Chat with Jane Doe.txt"), str(copy)], str(out),
                  sentence_backend="none", progress=False)
    err = capsys.readouterr().err
    written = "".join(p.read_text("utf-8", errors="replace") for p in out.rglob("*") if p.is_file())
    for name in ("홍길동", "Jane Doe", "Jane"):
        assert name not in written, name
    m = json.loads((out / "manifest.json").read_text("utf-8"))
    first, dup = m["inputs"]
    assert first["path"].endswith("KakaoTalk_Chat_[NAME]_2024-02-09-19-32-15/messages.jsonl")
    assert first["bad_line_examples"][0].startswith(first["path"] + ":2: ")
    assert dup["path"].endswith("KakaoTalk Chats with [NAME] (2 people)-1.jsonl") and dup["duplicate_of"] == first["path"]
    assert m["failed"][0]["path"].endswith("[LINE] Chat with [NAME].txt") and "empty" in m["failed"][0]["error"]
    assert m["failed"][0]["error"].startswith(m["failed"][0]["path"])
    markers = [json.loads(p.read_text("utf-8")) for p in (out / ".parts").glob("*.done.json")]
    assert [x["bad_line_examples"][0].split(":2:")[0] for x in markers] == [first["path"]]
    # the user's own terminal and the in-memory summary name the files as given
    assert summary["inputs"][0]["path"] == str(room / "messages.jsonl") and "Jane Doe" in err
    assert summary["inputs"][0]["bad_line_examples"][0].startswith(str(room / "messages.jsonl") + ":2:")
    # a second run resumes from the markers and writes the same manifest
    before = (out / "manifest.json").read_bytes()
    run([str(room), str(tmp_path / "[LINE] Chat with Jane Doe.txt"), str(copy)], str(out),
        sentence_backend="none", progress=False)
    assert (out / "manifest.json").read_bytes() == before


def test_ids_and_split_survive_a_re_export(tmp_path):
    """The same chat exported again with new messages appended: the sessions it already had keep
    their ids, so the train/test split (a hash of the id) does not move under a trained model."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = write_jsonl(tmp_path / "a" / "chat.jsonl", chat(6))
    later = write_jsonl(tmp_path / "b" / "chat.jsonl", chat(6) + chat(3, tag="new"))
    run([str(first)], str(tmp_path / "out-a"), sentence_backend="none", progress=False)
    run([str(later)], str(tmp_path / "out-b"), sentence_backend="none", progress=False)
    ids_a = {c.id for c in conversations(tmp_path / "out-a")}
    ids_b = {c.id for c in conversations(tmp_path / "out-b")}
    assert len(ids_a) == 6 and len(ids_b) == 9 and ids_a <= ids_b
