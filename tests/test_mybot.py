"""`dialogbert bot`: a user's own exports -> anonymized shards -> an index of the chosen speaker's
replies -> bot.json, end to end with a tiny random DialogBERT (the scores need not be good: the
test is what goes in, what is counted and what is never written)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from preprocess.schema import split_of

CHOSEN = "박영우 소마"                     # the speaker whose replies the bot gives
OTHERS = ("김민준/94/늑대", "지수🐰")
PHONE = "010-9876-5432"                   # planted in a reply of the chosen speaker
# Korean lines without names or personal data, each used once
ASKS = ["오늘 점심 뭐 먹었어?", "주말에 영화 볼래?", "숙제 다 했어?", "비 온다는데 우산 챙겼어?", "어제 경기 봤어?",
        "새로 생긴 카페 가봤어?", "시험 언제 끝나?", "요즘 무슨 책 읽어?", "이번 휴가 어디 가?", "저녁에 운동 갈래?",
        "그 드라마 끝났어?", "내일 몇 시에 일어나?", "강아지 산책 시켰어?", "택배 왔어?", "감기 다 나았어?",
        "노래방 갈 사람?"]
REPLIES = ["김치찌개 먹었어 맛있더라", "좋아 토요일 저녁 어때", "아직 반밖에 못 했어", "응 가방에 넣어 뒀어",
           "당연하지 마지막에 역전했잖아", "가봤는데 케이크가 괜찮았어", "다음 주 수요일에 끝나", "소설 하나 읽고 있어",
           "이번엔 바다 보러 가려고", "오늘은 좀 피곤해서 쉴래", "어제 마지막 화 봤어", "일곱 시쯤 일어날 것 같아",
           "아까 공원 한 바퀴 돌았어", "아직 안 왔어 내일 온대", "이제 거의 다 나았어", "나 갈래 몇 시에 모여"]
THIRDS = ["나도 궁금하다", "그거 재밌겠다", "나는 다 했지", "나는 깜빡했어", "나는 못 봤어", "거기 줄 길던데",
          "부럽다 나는 아직 멀었어", "추천 좀 해줘", "나도 데려가", "같이 가자", "결말 어땠어", "나는 늦잠 잘래",
          "귀엽겠다", "기다리기 힘들지", "다행이다", "나도 갈게"]


def kakao_pc(path: Path, sessions: range, phone_in: int | None = None, broken_in: int | None = None) -> dict:
    """A KakaoTalk Windows PC export (Korean UI): one session a day, each an ask by OTHERS[0], a
    reply by CHOSEN, a line by OTHERS[1] and a second reply by CHOSEN. Returns what it holds."""
    lines = [f"{CHOSEN} 님과 카카오톡 대화", "저장한 날짜 : 2024-03-01 10:00:00", ""]
    said = {"chosen": [], "others": [], "messages": 0, "system": 0, "bad": 0}
    for k, i in enumerate(sessions):
        lines.append(f"--------------- 2024년 1월 {i + 1}일 ---------------")
        if k == 0:
            lines.append(f"{OTHERS[0]}님이 {CHOSEN}님과 {OTHERS[1]}님을 초대했습니다.")
            said["system"] += 1
        second = f"{REPLIES[(i + 1) % len(REPLIES)]} 그치"
        if i == phone_in:
            second = f"내 번호 {PHONE} 이야"
        for name, text, time in ((OTHERS[0], ASKS[i], "오후 3:05"), (CHOSEN, REPLIES[i], "오후 3:06"),
                                 (OTHERS[1], THIRDS[i], "오후 3:07"), (CHOSEN, second, "오후 3:08")):
            lines.append(f"[{name}] [{time}] {text}")
            said["chosen" if name == CHOSEN else "others"].append(text)
            said["messages"] += 1
        if i == broken_in:
            lines.append(f"[{OTHERS[1]}] [오후 3:0")
            said["bad"] += 1
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return said


def line_mobile(path: Path, sessions: range) -> dict:
    """The same kind of sessions as a LINE mobile export (tab-separated)."""
    lines = ["[LINE] Chat history in 주말 모임", "Saved on: 2024/03/01 10:00", ""]
    said = {"chosen": [], "others": [], "messages": 0}
    for i in sessions:
        lines.append(f"Mon, 01/{i + 1:02d}/2024")
        for name, text, time in ((OTHERS[0], ASKS[i], "03:05pm"), (CHOSEN, REPLIES[i], "03:06pm"),
                                 (OTHERS[1], THIRDS[i], "03:07pm"), (CHOSEN, f"{REPLIES[(i + 1) % len(REPLIES)]} 그치", "03:08pm")):
            lines.append(f"{time}\t{name}\t{text}")
            said["chosen" if name == CHOSEN else "others"].append(text)
            said["messages"] += 1
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return said


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from conftest import save_random_dialogbert
    return save_random_dialogbert(tmp_path_factory.mktemp("mybot-model"), hidden=32, layers=1, pretraining=False)


def _rows(index: Path) -> list[dict]:
    return [json.loads(x) for x in (index / "responses.jsonl").read_text("utf-8").splitlines() if x.strip()]


def _convs(shards: Path) -> list[dict]:
    return [json.loads(x) for f in sorted(shards.glob("shard-*.jsonl")) for x in f.read_text("utf-8").splitlines()
            if x.strip()]


def _served_texts(shards: Path, marked: bool) -> set[str]:
    """Turn texts (t >= 1, every conversation: a user's bot holds out no test split) that are
    (``marked``) or are not the chosen speaker's."""
    return {t["text"] for c in _convs(shards)
            for n, t in enumerate(c["turns"]) if n >= 1 and bool(t.get("marked")) == marked}


def _files_holding(folder: Path, needles: list[str]) -> list[str]:
    hits = []
    for f in folder.rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            hits += [f"{f.relative_to(folder)}: {n}" for n in needles if n.encode("utf-8") in data]
        hits += [f"{f.relative_to(folder)} (name): {n}" for n in needles if n in f.name]
    return hits


def test_bot_serves_only_the_chosen_speaker_and_writes_no_name(tiny_model, tmp_path, capsys):
    from dialogbert.cli import main

    export = tmp_path / "in" / f"KakaoTalk_20240301_1000_00_000_{CHOSEN}.txt"  # the room's name, as the app names it
    export.parent.mkdir()
    said = kakao_pc(export, range(12), phone_in=3, broken_in=5)
    out = tmp_path / "bot"
    rc = main(["bot", str(export), "--out", str(out), "--model", str(tiny_model), "--reply-as", CHOSEN, "--no-serve"])
    printed = capsys.readouterr().out
    assert rc == 0

    rows = _rows(out / "index")
    texts = {r["text"] for r in rows}
    chosen = _served_texts(out / "shards", marked=True)
    assert texts and texts <= set(said["chosen"])                       # only the chosen speaker's replies ...
    assert texts == {t for t in chosen if "[" not in t}                  # ... all of them but the placeholder one
    assert not texts & set(said["others"]) and _served_texts(out / "shards", marked=False)
    assert "내 번호 [PHONE] 이야" in chosen | {t for c in _convs(out / "shards") for t in
                                              [x["text"] for x in c["turns"]]}

    # no display name, no name part, no export file name and no planted number in any file under out/
    assert _files_holding(out, [CHOSEN, "박영우", "영우", *OTHERS, "김민준", export.name, PHONE, "9876"]) == []

    rep = json.loads((out / "bot.json").read_text("utf-8"))
    build = rep["builds"][0]
    assert rep["reply_as"] == {"names": 1} and rep["serves"]["replies"] == len(rows)
    assert rep["serves"]["languages"] == {"ko": len(rows)}
    f = build["read"]["files"][0]
    assert f["export"] == "export 1" and "path" not in f and f["format"] == "kakao-pc"
    assert f["messages"] == said["messages"] + said["system"] and f["bad_lines"] == said["bad"] == 1
    assert f["conversations"] == build["read"]["conversations"] == 12
    assert f["bad_line_examples"][0].startswith("export 1:") and "looks like a message line" in f["bad_line_examples"][0]
    assert build["dropped"]["system"] == 1 and build["dropped"]["personal_data_replaced"] == {"[PHONE]": 1}
    assert build["replies"]["turns"] == 24 and build["replies"]["first_turns"] == 0
    assert build["replies"]["candidates"] == 24  # the test split's conversations too
    assert any(split_of(c["id"], source=c["source"]) == "test" for c in _convs(out / "shards"))
    assert json.loads((out / "index" / "index_info.json").read_text("utf-8"))["split"] == "all"
    assert build["index"]["added"] == len(rows) and build["index"]["left_out"]["other_speaker"] > 0
    assert build["index"]["left_out"].get("placeholder", 0) == (1 if "내 번호 [PHONE] 이야" in chosen else 0)
    assert rep["ranker"]["features"] == ["dual"] and "too few" in rep["ranker"]["note"]
    assert rep["finetune"] == {"note": "not asked for (--finetune-minutes 0)"} and not (out / "encoder").exists()
    from dialogbert.mybot import _finetune
    model, t = _finetune(tiny_model, out / "shards", out, 1.0, False)   # asked for, but 12 sessions
    assert model == tiny_model and "too few to fine-tune on" in t["note"] and not (out / "encoder").exists()
    # the terminal names the file (a path) and the speaker, the file does not
    assert str(export) in printed and f"{export}:" in printed and CHOSEN in printed
    assert f"serves: {len(rows)} replies (ko {len(rows)})" in printed and "[PHONE] 1" in printed


def test_add_grows_the_index_and_skips_what_the_bot_has(tiny_model, tmp_path, capsys):
    from dialogbert.mybot import add_to_bot, build_bot

    first = kakao_pc(tmp_path / "kakao.txt", range(8))
    out = tmp_path / "bot"
    build_bot([str(tmp_path / "kakao.txt")], out, model=tiny_model, reply_as=[CHOSEN], progress=False)
    before = _rows(out / "index")

    with pytest.raises(ValueError, match="--reply-as NAME again"):  # the names are stored nowhere
        add_to_bot([str(tmp_path / "kakao.txt")], out, progress=False)

    # a LINE export with one session the bot already has (day 8) and eight new ones
    second = line_mobile(tmp_path / "line.txt", range(7, 16))
    rep = add_to_bot([str(tmp_path / "line.txt")], out, reply_as=[CHOSEN.replace(" ", "  ")], progress=False)
    after = _rows(out / "index")
    add = rep["builds"][-1]
    assert add["kind"] == "add" and add["shards"] == "shards-2" and rep["shards"] == ["shards", "shards-2"]
    assert add["already_in_bot"] == 1 and add["read"]["conversations"] == 8
    assert after[:len(before)] == before and len(after) == len(before) + add["index"]["added"] > len(before)
    assert {r["text"] for r in after} <= set(first["chosen"]) | set(second["chosen"])
    new = _served_texts(out / "shards-2", marked=True) - {r["text"] for r in before}
    assert {r["text"] for r in after[len(before):]} == new
    assert rep["serves"]["replies"] == len(after)
    info = json.loads((out / "index" / "index_info.json").read_text("utf-8"))
    assert info["count"] == len(after) and info["shards"][-1].endswith("shards-2")
    assert _files_holding(out, [CHOSEN, "박영우", *OTHERS]) == []
    assert "already in the bot: 1 conversations" in capsys.readouterr().out

    # building again starts over: the added exports' folder goes with the old index
    rep = build_bot([str(tmp_path / "kakao.txt")], out, model=tiny_model, reply_as=[CHOSEN], progress=False)
    assert rep["shards"] == ["shards"] and len(rep["builds"]) == 1 and not (out / "shards-2").exists()
    assert _rows(out / "index") == before


def test_every_speaker_without_reply_as(tiny_model, tmp_path):
    from dialogbert.mybot import build_bot

    said = kakao_pc(tmp_path / "k.txt", range(6))
    rep = build_bot([str(tmp_path / "k.txt")], tmp_path / "bot", model=tiny_model, progress=False)
    texts = {r["text"] for r in _rows(tmp_path / "bot" / "index")}
    assert texts & set(said["others"]) and texts & set(said["chosen"])
    assert rep["reply_as"] is None and rep["speakers"] == "every speaker"
    assert not any(t.get("marked") for c in _convs(tmp_path / "bot" / "shards") for t in c["turns"])


def test_bad_input_is_a_clear_error(tiny_model, tmp_path, capsys, monkeypatch):
    from dialogbert import mybot
    from dialogbert.cli import main

    kakao_pc(tmp_path / "k.txt", range(4))
    base = ["--out", str(tmp_path / "bot"), "--model", str(tiny_model), "--no-serve"]
    assert main(["bot", str(tmp_path / "missing.txt"), *base]) == 2
    assert f"{tmp_path / 'missing.txt'}: no such file or folder" in capsys.readouterr().err

    (tmp_path / "junk.txt").write_text("hello\nthis is no chat export\n", encoding="utf-8")
    assert main(["bot", str(tmp_path / "junk.txt"), *base]) == 2
    assert str(tmp_path / "junk.txt") in capsys.readouterr().err

    assert _files_holding(tmp_path / "bot", ["junk"]) == []  # the failed input is "export 1" in its manifest

    # a name nobody in the export has: the speakers are listed on the terminal, nothing is written
    other = ["--out", str(tmp_path / "other"), *base[2:]]
    assert main(["bot", str(tmp_path / "k.txt"), "--reply-as", "최서연", *other]) == 2
    err = capsys.readouterr().err
    assert "'최서연': nobody of that name" in err and f"{CHOSEN} (8)" in err and f"{OTHERS[0]} (4)" in err
    assert not (tmp_path / "other").exists()

    assert main(["bot", "--add", str(tmp_path / "k.txt"), *base]) == 2
    assert "holds no bot" in capsys.readouterr().err
    assert main(["bot", str(tmp_path / "k.txt"), "--add", str(tmp_path / "k.txt"), *base]) == 2

    monkeypatch.setattr(mybot, "DEFAULT_MODELS", (tmp_path / "runs" / "demo" / "encoder",))
    assert main(["bot", str(tmp_path / "k.txt"), "--out", str(tmp_path / "bot"), "--no-serve"]) == 2
    err = capsys.readouterr().err
    assert "make demo" in err and "--model" in err


def test_it_ends_in_the_same_server_as_serve(tiny_model, tmp_path, monkeypatch):
    import bot.server
    from dialogbert.cli import main

    calls = []
    monkeypatch.setattr(bot.server, "serve", lambda config, **kw: calls.append((config, kw)) or 0)
    kakao_pc(tmp_path / "k.txt", range(4))
    assert main(["bot", str(tmp_path / "k.txt"), "--out", str(tmp_path / "bot"), "--model", str(tiny_model),
                 "--port", "8123", "--host", "0.0.0.0"]) == 0
    [(config, kw)] = calls
    assert config == {"INDEX_DIR": str(tmp_path / "bot" / "index"), "MODEL_DIR": str(tiny_model.resolve())}
    assert kw == {"host": "0.0.0.0", "port": 8123}


def test_marks_change_nothing_but_the_flag_and_are_never_reused(tmp_path):
    from preprocess.pipeline import run

    kakao_pc(tmp_path / "k.txt", range(5))
    plain = run([str(tmp_path / "k.txt")], str(tmp_path / "plain"), progress=False)
    marked = run([str(tmp_path / "k.txt")], str(tmp_path / "marked"), progress=False, mark_speakers=[CHOSEN.upper()])
    assert {k: v for k, v in plain.items() if k not in ("out", "seconds")} == \
        {k: v for k, v in marked.items() if k not in ("out", "seconds")}
    a, b = _convs(tmp_path / "plain"), _convs(tmp_path / "marked")
    assert [c["id"] for c in a] == [c["id"] for c in b]
    assert all(t.get("marked") == (t["text"] in {x for x in REPLIES} or t["text"].endswith(" 그치") or None)
               for c in b for t in c["turns"])
    assert sum(t.get("marked", False) for c in b for t in c["turns"]) == 10
    # the same folder again with another name: nothing of the first marking is reused
    run([str(tmp_path / "k.txt")], str(tmp_path / "marked"), progress=False, mark_speakers=[OTHERS[1]])
    again = _convs(tmp_path / "marked")
    assert [t["text"] for c in again for t in c["turns"] if t.get("marked")] == THIRDS[:5]
    # and a plain resumed run there reuses no marked part
    run([str(tmp_path / "k.txt")], str(tmp_path / "marked"), progress=False)
    assert not any(t.get("marked") for c in _convs(tmp_path / "marked") for t in c["turns"])


def test_fine_tuning_on_the_users_pairs_is_kept_only_when_it_scores_higher(tiny_model, tmp_path, monkeypatch):
    """Enough pairs: the model is fine-tuned on them, both models are scored on the held-out tenth,
    and the index is built with the fine-tuned one exactly when it scored higher there."""
    from conftest import sample_conversations
    from dialogbert import mybot
    from preprocess.schema import write_shard

    export = tmp_path / "chats.jsonl"
    write_shard(export, sample_conversations(n_persona=40, n_qa=150))
    seen = []
    real = mybot._finetune

    def spy(*a, **kw):
        seen.append(real(*a, **kw))
        return seen[-1]
    monkeypatch.setattr(mybot, "_finetune", spy)
    out = tmp_path / "bot"
    rep = mybot.build_bot([str(export)], out, model=tiny_model, progress=False, finetune_minutes=0.05)
    t = rep["finetune"]
    assert t["pairs"] >= mybot.FINETUNE_MIN_PAIRS and t["carve_out"] >= mybot.MEASURE_MIN_EXAMPLES and t["steps"] >= 1
    assert t["kept"] == (t["R10@1_after"] - t["R10@1_before"] > 2 * t["gain_se"])
    model = json.loads((out / "index" / "index_info.json").read_text("utf-8"))["model"]
    assert (Path(model).resolve() == (out / "encoder").resolve()) == t["kept"] == (out / "encoder").exists()
    assert seen[0][0] == Path(model) and seen[0][1] == t
    (out / "encoder").mkdir(exist_ok=True)             # a rebuild without fine-tuning: an earlier one's model goes
    rep = mybot.build_bot([str(export)], out, model=tiny_model, progress=False, finetune_minutes=0)
    assert not (out / "encoder").exists() and rep["finetune"]["note"].startswith("not asked for")

    # the other way round: a fine-tuned model that does not score higher is deleted, the given one serves
    import numpy as np
    right = {True: np.array([1.0] * 10 + [0.0] * 10), False: np.array([1.0] * 8 + [0.0] * 12)}
    monkeypatch.setattr(mybot, "_score_on", lambda m, ev: right[Path(m) == tiny_model])
    model, t = real(tiny_model, out / "shards", out, 0.05, False)
    assert model == tiny_model and t["kept"] is False and not (out / "encoder").exists()
    monkeypatch.setattr(mybot, "_score_on", lambda m, ev: right[Path(m) != tiny_model])
    model, t = real(tiny_model, out / "shards", out, 0.05, False)   # higher, but within chance on 20 examples
    assert t["R10@1_after"] > t["R10@1_before"] and t["kept"] is False and model == tiny_model
    assert real(tiny_model, out / "shards", out, 0, False) == (tiny_model, {"note": "not asked for (--finetune-minutes 0)"})


def test_a_gain_counts_only_beyond_two_standard_errors():
    from dialogbert.mybot import helps
    before = [0, 1] * 50                                   # 100 held-out examples, R10@1 0.5
    assert helps(before, [1, 1] * 50) == (True, 0.5, pytest.approx(0.0503, abs=1e-3))
    assert helps(before, [1] * 4 + before[4:])[0] is False       # +0.02: two more right is chance
    assert helps(before, before) == (False, 0.0, 0.0)
    assert helps(before, [1, 0] * 50)[0] is False                  # as many lost as won
