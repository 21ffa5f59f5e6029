"""preprocess.pipeline.run(mark_speakers=...): the turns of named speakers are marked, nothing else
changes, and no marking is reused from another run."""
from __future__ import annotations

import json
from pathlib import Path


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


def _convs(shards: Path) -> list[dict]:
    return [json.loads(x) for f in sorted(shards.glob("shard-*.jsonl")) for x in f.read_text("utf-8").splitlines()
            if x.strip()]


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
