"""Export readers: every format variant, encodings, detection by content, bad input, corpora.

Fixtures under tests/fixtures/exports/ are invented (people and words made up). The `same_*`
files are one conversation exported in every messenger format."""
from __future__ import annotations

import gzip
import json
import shutil
import tracemalloc
from datetime import datetime
from pathlib import Path

import pytest

from preprocess.formats import FORMATS, BadLine, FormatError, Message, detect, iter_messages, media_kind
from preprocess.schema import Conversation, Turn, write_shard

ROOT = Path(__file__).resolve().parents[1]
FIX = Path(__file__).resolve().parent / "fixtures" / "exports"
SAMPLE = ROOT / "data" / "sample"

# The invented conversation every same_* fixture renders.
SAME = [
    ("김민준/94/늑대", "영우야 내일 시간 돼?", "2024-01-02 15:05"),
    ("박영우 소마", "응 오후엔 괜찮아", "2024-01-02 15:06"),
    ("박영우 소마", "왜?", "2024-01-02 15:06"),
    ("지수🐰", "나도 갈래!!\n어디서 봐?", "2024-01-02 15:07"),
    ("김민준/94/늑대", "강남역 11번 출구", "2024-01-02 15:09"),
    ("박영우 소마", "좋아 ㅋㅋ", "2024-01-02 15:10"),
    ("김민준/94/늑대", "잘 자", "2024-01-03 00:01"),
    ("박영우 소마", "점심 뭐 먹지 : 고민이다", "2024-01-03 12:30"),
    ("지수🐰", "[공지] 내일 10시\n늦지 마", "2024-01-03 12:31"),
    ("김민준/94/늑대", "내 번호 010-1234-5678 이야", "2024-01-03 20:00"),
]
SAME_FILES = {
    "same_kakao_pc_ko.txt": "kakao-pc",
    "same_kakao_android_ko.txt": "kakao-android",
    "same_kakao_android_en.txt": "kakao-android",
    "same_kakao_android_oldeng.txt": "kakao-android",
    "same_kakao_ios_ko.txt": "kakao-ios",
    "same_kakao_ios_en.txt": "kakao-ios",
    "same_kakao_ios_ko_bom_crlf.txt": "kakao-ios",     # UTF-8 with BOM, CRLF
    "same_kakao_mac.csv": "kakao-mac-csv",
    "same_line_mobile.txt": "line-mobile",
    "same_line_mobile_utf16.txt": "line-mobile",       # UTF-16-LE with BOM
    "same_line_desktop.txt": "line-desktop",
}


def read(path, fmt=None):
    out = list(iter_messages(path, fmt))
    bad = [m for m in out if isinstance(m, BadLine)]
    msgs = [m for m in out if isinstance(m, Message)]
    return msgs, bad


def turns(msgs):
    """(speaker, text, time to the minute) of the non-system messages."""
    return [(m.speaker, m.text, m.time.strftime("%Y-%m-%d %H:%M") if m.time else None)
            for m in msgs if not m.system]


def texts(msgs, system=False):
    return [m.text for m in msgs if m.system == system]


# ---- one conversation, every format ---------------------------------------------------------
@pytest.mark.parametrize("name,fmt", sorted(SAME_FILES.items()))
def test_same_conversation_in_every_format(name, fmt):
    path = FIX / name
    assert detect(path) == fmt
    msgs, bad = read(path)
    assert bad == []
    assert turns(msgs) == SAME
    system = [m for m in msgs if m.system]
    assert len(system) == 1 and system[0].speaker is None
    assert "박영우 소마" in system[0].text and "지수🐰" in system[0].text     # names for the anonymizer


@pytest.mark.parametrize("name", sorted(SAME_FILES))
def test_detection_ignores_the_file_name(tmp_path, name):
    for ext in (".csv", ".json", ".bin", ""):
        wrong = tmp_path / f"export{ext}"
        shutil.copy(FIX / name, wrong)
        assert detect(wrong) == SAME_FILES[name]
    gz = tmp_path / "export.txt"                      # gzip found by magic bytes, not by name
    gz.write_bytes(gzip.compress((FIX / name).read_bytes()))
    assert detect(gz) == SAME_FILES[name]
    assert turns(read(gz)[0]) == SAME


def test_line_numbers_point_at_the_message_start():
    msgs, _ = read(FIX / "same_kakao_pc_ko.txt")
    lines = (FIX / "same_kakao_pc_ko.txt").read_text("utf-8").split("\n")
    for m in msgs:
        assert m.text.split("\n")[0] in lines[m.line - 1]
    assert [m.line for m in msgs][:6] == [5, 6, 7, 8, 9, 11]


# ---- format variants ------------------------------------------------------------------------
def test_kakao_pc_english_ui():
    msgs, bad = read(FIX / "kakao_pc_en.txt")
    assert bad == []
    assert turns(msgs) == [
        ("Jenny Park", "hey all", "2015-08-01 14:37"),
        ("Tom #2", "(emoticon)", "2015-08-01 14:38"),
        ("you", "hi! [see] [this] note\nand a second line", "2015-08-01 14:38"),
        ("하늘", "photo", "2015-08-01 23:59"),
        ("Tom #2", "late night", "2015-08-02 00:03"),
    ]
    assert texts(msgs, system=True) == [
        "Jenny Park invited Tom #2 and 하늘.", "This message has been deleted.", "Tom #2 left this chatroom."]


def test_kakao_pc_korean_system_lines_and_media():
    msgs, bad = read(FIX / "kakao_pc_ko_variants.txt")
    assert bad == []
    assert turns(msgs) == [
        ("회원님", "다들 자?", "2020-06-28 01:01"),
        ("이서연", "사진 3장", "2020-06-28 01:02"),
        ("박영우 소마", "[오전 9:00] 이라고 적어둠 ㅋㅋ", "2020-06-28 12:01"),
    ]
    assert texts(msgs, system=True) == [
        "이서연님이 들어왔습니다.", "삭제된 메시지입니다.", "톡게시판 '공지': 이번 주 토요일 9시 체육관",
        "채팅방 관리자가 최도윤님을 내보냈습니다."]
    assert all(m.speaker is None for m in msgs if m.system)


def test_kakao_android_korean():
    msgs, bad = read(FIX / "kakao_android_ko_variants.txt")
    assert bad == []
    assert turns(msgs) == [
        ("엄마", "자니?", "2016-02-05 01:33"),
        ("회원님", "아직요\n내일 일찍 나가요", "2016-02-05 01:34"),
        ("엄마", "이모티콘", "2016-02-05 01:35"),
        ("아빠", "", "2016-02-06 09:00"),
        ("아빠", "사진", "2016-02-06 09:01"),
    ]
    [leave] = [m for m in msgs if m.system]
    assert leave.text == "막내님이 나갔습니다." and leave.time == datetime(2016, 2, 5, 13, 2) and leave.line == 9


def test_kakao_ios_headerless_fragment():
    path = FIX / "kakao_ios_fragment.txt"
    assert detect(path) == "kakao-ios"
    msgs, bad = read(path)
    assert bad == []
    assert turns(msgs) == [
        ("민지", "새해 복 많이 받아!!", "2022-12-31 23:59"),
        ("준호", "너도~", "2023-01-01 00:00"),
        ("수아", "<사진>", "2023-01-01 10:30"),
    ]
    assert texts(msgs, system=True) == ["민지님이 수아님, 지훈님과 하린님을 초대했습니다.", "지훈님이 나갔습니다."]


def test_line_mobile_japanese_header_quotes_and_system():
    msgs, bad = read(FIX / "line_mobile_ja.txt")
    assert bad == []
    assert turns(msgs) == [
        ("山田 太郎", "こんにちは", "2025-04-18 15:05"),
        ("あなた", "[スタンプ]", "2025-04-18 15:06"),
        ("山田 太郎", '明日は\n"駅前"で', "2025-04-18 15:07"),
        ("佐藤花子", "[写真]", "2025-04-19 09:01"),
    ]
    assert texts(msgs, system=True) == ["メッセージの送信を取り消しました", "佐藤花子がグループに参加しました。"]


@pytest.mark.parametrize("name,expected", [
    ("line_mobile_ko.txt", [("민지", "안녕", "2024-01-02 15:05"), ("회원님", "응 안녕", "2024-01-02 15:06"),
                            ("민지", "[Photo]", "2024-01-02 00:10")]),
    ("line_mobile_zh.txt", [("小明", "你好", "2017-11-20 16:46"), ("阿華", "貼圖", "2017-11-20 16:47"),
                            ("小明", "晚安", "2017-11-20 00:05")]),
])
def test_line_mobile_other_languages(name, expected):
    assert detect(FIX / name) == "line-mobile"
    msgs, bad = read(FIX / name)
    assert bad == [] and turns(msgs) == expected


def test_line_desktop_resolves_names_with_spaces():
    msgs, bad = read(FIX / "line_desktop_en.txt")
    assert bad == []
    assert [(s, t) for s, t, _ in turns(msgs)] == [
        ("Kim Min Jun", "hello everyone"), ("Kim Min Jun", "anyone up for lunch"),
        ("Lee Jisoo", "hi"),                                 # one message: named by its join line
        ("Kim Min Jun", "ok cool"), ("Bob", "line one\nline two"), ("Bob", "sure"),
        ("Kim Min Jun", "see you")]
    assert texts(msgs, system=True) == ["Lee Jisoo joined the group."]


def test_mac_csv_quotes_commas_and_newlines(tmp_path):
    p = tmp_path / "talk.csv"
    p.write_text('Date,User,Message\n2015-07-09 20:34:26,"A, B","say ""hi""\n, then go"\n'
                 '2015-07-09 20:35:00,"you","ok"\n', "utf-8")
    msgs, bad = read(p)
    assert bad == []
    assert [(m.speaker, m.text, m.time) for m in msgs] == [
        ("A, B", 'say "hi"\n, then go', datetime(2015, 7, 9, 20, 34, 26)),
        ("you", "ok", datetime(2015, 7, 9, 20, 35))]


# ---- encodings ------------------------------------------------------------------------------
def test_cp949_crlf_fixture():
    raw = (FIX / "kakao_pc_cp949.txt").read_bytes()
    with pytest.raises(UnicodeDecodeError):
        raw.decode("utf-8")
    msgs, bad = read(FIX / "kakao_pc_cp949.txt")
    assert bad == []
    assert turns(msgs) == [("정하늘", "오늘 회의 몇 시야?", "2021-03-02 09:15"),
                           ("회원님", "열 시\n3층 회의실", "2021-03-02 09:16"),
                           ("정하늘", "수고했어", "2021-03-02 18:01")]


@pytest.mark.parametrize("encoding,bom", [("utf-16-be", b"\xfe\xff"), ("utf-16-le", b"\xff\xfe"),
                                          ("utf-16-le", b""), ("euc-kr", b""), ("utf-8", b"")])
def test_more_encodings(tmp_path, encoding, bom):
    text = (FIX / "kakao_pc_cp949.txt").read_bytes().decode("cp949") + "[가나] [오후 9:00] 가가 갈게\r\n"
    p = tmp_path / "talk.txt"
    p.write_bytes(bom + text.encode(encoding))
    assert turns(read(p)[0]) == turns(read(FIX / "kakao_pc_cp949.txt")[0]) + [("가나", "가가 갈게", "2021-03-02 21:00")]


def test_undecodable_bytes_deep_in_a_file_give_a_badline(tmp_path):
    head = (FIX / "same_kakao_pc_ko.txt").read_bytes()
    filler = b"".join(b"[x] [\xec\x98\xa4\xed\x9b\x84 1:%02d] filler\n" % (i % 60) for i in range(20000))
    p = tmp_path / "talk.txt"
    p.write_bytes(head + filler + b"[x] [\xec\x98\xa4\xed\x9b\x84 2:00] bad \xff\xfe here\n[x] [\xec\x98\xa4\xed\x9b\x84 2:01] after\n")
    msgs, bad = read(p)
    n = head.count(b"\n") + 20000 + 1
    assert [(b.line, "valid utf-8" in b.reason) for b in bad] == [(n, True)]
    assert msgs[-1].text == "after" and msgs[-1].line == n + 1


# ---- bad input ------------------------------------------------------------------------------
@pytest.mark.parametrize("content,reason", [
    (b"", "empty"), (b"\xef\xbb\xbf\r\n\r\n  \n", "empty"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 4, "binary"),
    (bytes(range(128, 256)) * 50, "undecodable"),
    ("영화 정말 재미있었다\n배우 연기가 좋았음\n".encode(), "unknown format"),
    (b'{"a": 1}\n', "unknown JSON"),
])
def test_unreadable_files_raise_formaterror_naming_the_file(tmp_path, content, reason):
    p = tmp_path / "weird.txt"
    p.write_bytes(content)
    with pytest.raises(FormatError) as e:
        detect(p)
    assert str(p) in str(e.value) and reason in str(e.value)
    with pytest.raises(FormatError):
        iter_messages(p)                 # raised at the call, not at the first next()


def test_unknown_format_name(tmp_path):
    with pytest.raises(FormatError, match="unknown format name"):
        iter_messages(FIX / "same_kakao_pc_ko.txt", "whatsapp")
    assert len(FORMATS) == 11 and "kakao-pc" in FORMATS


@pytest.mark.parametrize("name,line_no,garbled", [
    ("same_kakao_pc_ko.txt", 8, "[박영우 소마] [오후 3:0"),
    ("same_kakao_android_ko.txt", 8, "2024년 1월 2일 오후 3:"),
    ("same_kakao_ios_ko.txt", 8, "2024. 1. 2. 오후 3"),
    ("same_kakao_ios_en.txt", 8, "Jan 2, 2024, 3:0"),
    ("same_line_mobile.txt", 8, "03:0\t박영우 소마\t왜?"),
])
def test_truncated_line_gives_badline_and_reading_goes_on(tmp_path, name, line_no, garbled):
    lines = (FIX / name).read_text("utf-8").split("\n")
    lines[line_no - 1] = garbled
    p = tmp_path / name
    p.write_text("\n".join(lines), "utf-8")
    msgs, bad = read(p)
    assert [(b.line, b.preview) for b in bad] == [(line_no, garbled)]
    assert turns(msgs) == SAME[:2] + SAME[3:]


def test_ten_megabyte_line_is_reported_in_bounded_memory(tmp_path):
    p = tmp_path / "huge.txt"
    head = (FIX / "same_kakao_pc_ko.txt").read_text("utf-8")
    p.write_text(head + "[x] [오후 9:00] " + "가" * 10_000_000 + "\n[y] [오후 9:01] 다음\n", "utf-8")
    tracemalloc.start()
    try:
        msgs, bad = read(p)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    n = head.count("\n") + 1
    assert [(b.line, "longer than" in b.reason) for b in bad] == [(n, True)]
    assert (msgs[-1].speaker, msgs[-1].text, msgs[-1].line) == ("y", "다음", n + 1)
    assert peak < 16 << 20                 # the line alone is 10M characters (~20-40 MB as str)


def test_truncated_gzip_gives_badline(tmp_path):
    data = gzip.compress((FIX / "same_kakao_android_ko.txt").read_bytes() * 200)
    p = tmp_path / "cut.gz"
    p.write_bytes(data[: len(data) // 2])
    msgs, bad = read(p, "kakao-android")
    assert len(bad) == 1 and "ends early" in bad[0].reason and len(msgs) > 100


def test_truncated_json_gives_badline(tmp_path):
    p = tmp_path / "x.json"
    p.write_text('[{"persona": [], "dialogue": [["안녕", "반가워"]]}, {"persona": [], "dialogue": [["뭐', "utf-8")
    msgs, bad = read(p)
    assert [m.text for m in msgs] == ["안녕", "반가워"] and [b.line for b in bad] == [2]


# ---- media placeholders ---------------------------------------------------------------------
@pytest.mark.parametrize("text,kind", [
    ("사진", "photo"), ("사진 3장", "photo"), ("<사진>", "photo"), ("photo", "photo"), ("<Photo>", "photo"),
    ("[Photo]", "photo"), ("[写真]", "photo"), ("圖片", "photo"), ("Photos 2", "photo"),
    ("이모티콘", "emoticon"), ("(이모티콘)", "emoticon"), ("(emoticon)", "emoticon"),
    ("[Sticker]", "sticker"), ("[スタンプ]", "sticker"), ("貼圖", "sticker"),
    ("동영상", "video"), ("[Video]", "video"), ("파일: 보고서.hwp", "file"), ("File: a.pdf", "file"),
    ("삭제된 메시지입니다.", "deleted"), ("Message unsent.", "deleted"),
    ("톡게시판 '공지': 내일 9시", "notice"), ("보이스톡", "call"), ("음성메시지", "voice"),
    ("사진 보여줘", None), ("내 사진", None), ("photo of you", None), ("", None), ("ㅋㅋ", None),
])
def test_media_kind(text, kind):
    assert media_kind(text) == kind


# ---- our own shards and the bundled corpora -------------------------------------------------
def test_jsonl_shards_round_trip(tmp_path):
    p = tmp_path / "shard-00000.jsonl"
    write_shard(p, [Conversation("c1", "kakao-pc", "ko", [Turn("S1", "안녕\n뭐해?", time="2020-06-28T01:01:00"),
                                                          Turn("S2", "그냥")])])
    assert detect(p) == "jsonl"
    msgs, bad = read(p)
    assert bad == []
    assert [(m.conv, m.speaker, m.text, m.time) for m in msgs] == [
        ("c1", "S1", "안녕", datetime(2020, 6, 28, 1, 1)), ("c1", "S1", "뭐해?", datetime(2020, 6, 28, 1, 1)),
        ("c1", "S2", "그냥", None)]


def test_chatbotdata_sample():
    p = SAMPLE / "chatbotdata-ko" / "ChatbotData.csv"
    assert detect(p) == "chatbotdata"
    msgs, bad = read(p)
    assert bad == []
    assert len({m.conv for m in msgs}) == 11_823
    assert (msgs[0].conv, msgs[0].speaker, msgs[0].text, msgs[0].line) == ("1", "Q", "12시 땡!", 2)
    assert (msgs[1].speaker, msgs[1].text) == ("A", "하루가 또 가네요.")


def test_xpersona_sample():
    paths = sorted((SAMPLE / "xpersona-ko").glob("*.json"))
    assert paths and all(detect(p) == "xpersona" for p in paths)
    dialogues = utterances = 0
    for p in paths:
        msgs, bad = read(p)
        assert bad == []
        dialogues += len({m.conv for m in msgs})
        utterances += len(msgs)
        assert {m.speaker for m in msgs} == {"A", "B"}
    assert (dialogues, utterances) == (599, 9_362)


def test_chitchat_sample_gz_and_plain_json(tmp_path):
    p = SAMPLE / "chitchat-en" / "dataset.json.gz"
    assert detect(p) == "chitchat"
    msgs, bad = read(p)
    assert bad == [] and len({m.conv for m in msgs}) == 1_500
    assert all(isinstance(m.time, datetime) and m.time.tzinfo is None for m in msgs[:100])
    with gzip.open(p, "rt", encoding="utf-8") as f:
        first = dict(list(json.load(f).items())[:3])
    plain = tmp_path / "dataset.json"
    plain.write_text(json.dumps(first, indent=2), "utf-8")
    assert detect(plain) == "chitchat"
    small, bad = read(plain)
    assert bad == [] and [m.text for m in small] == [m.text for m in msgs[:len(small)]]


def test_chatterbot_yaml():
    """An invented file in the chatterbot-corpus layout (the Korean corpus in ../shared came without
    a licence, so nothing of it is copied here): each list one conversation, numbered from 1,
    speakers A and B alternating; a number is text, an empty turn is skipped, an entry that is no
    list is a bad line (its number in the list), and reading goes on after it."""
    p = FIX / "chatterbot_ko.yml"
    assert detect(p) == "chatterbot"
    msgs, bad = read(p)
    assert [(m.conv, m.speaker, m.text) for m in msgs] == [
        ("1", "A", "좋은 아침이에요"), ("1", "B", "네, 잘 잤어요?"),
        ("2", "A", "주말에 뭐 해?"), ("2", "B", "등산 가려고"), ("2", "A", "오 어디로?"),
        ("3", "A", "몇 시에 볼까?"), ("3", "B", "7"),
        ("4", "A", "사진 보냈어\n확인해 줘"), ("4", "B", "잘 받았어"),
        ("6", "A", "끝"), ("6", "B", "안녕히 가세요")]
    assert all(m.time is None and not m.system for m in msgs)
    assert [(b.line, b.reason) for b in bad] == [(5, "conversation 5 is not a list of lines")]


# ---- the demo exports -----------------------------------------------------------------------
@pytest.mark.parametrize("name,fmt", [
    ("kakaotalk_pc_ko.txt", "kakao-pc"), ("kakaotalk_android_ko.txt", "kakao-android"),
    ("line_mobile_ko.txt", "line-mobile")])
def test_demo_exports(name, fmt):
    p = SAMPLE / "kakaotalk" / name
    assert detect(p) == fmt
    msgs, bad = read(p)
    assert bad == []
    assert 30 <= len([m for m in msgs if not m.system]) <= 80
    assert any(m.system for m in msgs) and all(m.time for m in msgs if not m.system)
