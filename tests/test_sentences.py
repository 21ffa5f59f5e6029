"""The sentence splitter: the default `rules` backend on real Korean and English chat, what it
must not split, and agreement with kss `punct` (the previous default) on a bundled sample."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from preprocess.sentences import BACKENDS, DEFAULT_BACKEND, SentenceSplitter, split_rules

ROOT = Path(__file__).resolve().parents[1]

SPLITS = [
    # Korean (XPersona-ko / chatbotdata-ko style)
    ("흥미로워. 나의 가족은 내가 어렸을 때 말 농장을 가지고 있었어.",
     ["흥미로워.", "나의 가족은 내가 어렸을 때 말 농장을 가지고 있었어."]),
    ("정말? 멋지다", ["정말?", "멋지다"]),
    ("흥미롭군! 행운을 빌어!", ["흥미롭군!", "행운을 빌어!"]),
    ("좋아! ㅋㅋ 내일 봐", ["좋아! ㅋㅋ", "내일 봐"]),            # laughter stays with its sentence
    ("진짜?ㅠㅠ 그래도 가자", ["진짜?ㅠㅠ", "그래도 가자"]),
    ("와!^^ 고마워요", ["와!^^", "고마워요"]),
    ("안 돼요... 너무 늦었어요", ["안 돼요...", "너무 늦었어요"]),
    ("[NAME]야 고마워. [PHONE]로 연락해", ["[NAME]야 고마워.", "[PHONE]로 연락해"]),
    ("그가 \"안녕. 반가워.\" 라고 했다. 그래서 웃었지", ["그가 \"안녕. 반가워.\" 라고 했다.", "그래서 웃었지"]),
    # English (chitchat-en style)
    ("I haven't. What's it about?", ["I haven't.", "What's it about?"]),
    ("Good choices, and I agree. Please continue! :D", ["Good choices, and I agree.", "Please continue! :D"]),
    ("That's true! I think Mt. Everest would be too cold for me.",
     ["That's true!", "I think Mt. Everest would be too cold for me."]),
    ("Right??? Neither am I. I hate it!!!", ["Right???", "Neither am I.", "I hate it!!!"]),
    ("Hi! :) how are you", ["Hi! :)", "how are you"]),
]

ONE_SENTENCE = [
    "3.5", "평점 3.5점 줄게", "Mr. Kim is here", "ㅋㅋㅋ", "ㅋㅋㅋㅋ 진짜 웃기다", "ㅠㅠ",
    "see https://example.com/a.b?c=1 now", "www.naver.com 가봐", "[PHONE]", "[URL] [EMAIL] 로 보내줘",
    "I live in the U.S. It is big", "George W. Bush", "I'm 25. You?", "1. 2. 3. 시작",
    "그는 '좋아. 그래' 라고 말했다", "(진짜. 정말) 그래", "ok!!", "뭐라고?!", "좋아. 응. 그래", "a.b.c",
    "오늘 치킨 먹을래", "did you see the game it was awesome we should go again next week and maybe bring friends too",
]


@pytest.mark.parametrize("text,want", SPLITS)
def test_known_splits(text, want):
    assert split_rules(text) == want
    assert SentenceSplitter().split_message(text) == want


@pytest.mark.parametrize("text", ONE_SENTENCE)
def test_not_split(text):
    assert split_rules(text) == [text]


def test_turn_keeps_message_boundaries_and_never_imports_kss():
    sp = SentenceSplitter()
    assert DEFAULT_BACKEND == "rules" and "rules" in BACKENDS and {"punct", "pecab", "fast", "none"} <= set(BACKENDS)
    assert sp.split_turn("안녕\n뭐해? 나는 집이야") == ["안녕", "뭐해?", "나는 집이야"]
    assert sp.split_turn("ㅋㅋ") == ["ㅋㅋ"]
    assert sp.kss_calls == 0 and sp._split is None and not sp.needs_kss("정말? 멋지다" * 20)


def test_every_piece_is_a_stripped_slice_of_the_message():
    for text, _ in SPLITS:
        parts = split_rules(text)
        assert all(p == p.strip() and p for p in parts)
        assert "".join(parts).replace(" ", "") == text.replace(" ", "")


def _bench():
    spec = importlib.util.spec_from_file_location("bench_preprocess", ROOT / "bench" / "preprocess.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_docs_writer_keeps_hand_written_text(tmp_path):
    bench = _bench()
    doc = tmp_path / "benchmarks.md"
    doc.write_text(f"# B\n\n## Preprocessing\n\nold\n\n{bench.GENERATED_END}\n\nkept\n\n## Other\n\nx\n", "utf-8")
    bench.update_docs(doc, "## Preprocessing\n\nnew\n")
    text = doc.read_text("utf-8")
    assert "new" in text and "old" not in text and "kept" in text and text.endswith("## Other\n\nx\n")


@pytest.mark.skipif(importlib.util.find_spec("kss") is None, reason="kss is not installed")
def test_agrees_with_kss_punct_on_a_bundled_sample():
    """200 XPersona-ko and 200 chitchat-en messages that kss punct would have been called for."""
    import gzip
    kss = SentenceSplitter("punct")
    ko = [m for d in json.loads((ROOT / "data/sample/xpersona-ko/Ko_persona_split_test_human_annotated.json")
                                .read_text("utf-8"))[:60] for pair in d["dialogue"] for m in pair]
    en = [m["text"] for conv in list(json.load(gzip.open(ROOT / "data/sample/chitchat-en/dataset.json.gz", "rt"))
                                      .values())[:40] for turn in conv["messages"] for m in turn]
    bench = _bench()
    for msgs, floor in ((ko, 0.97), (en, 0.95)):
        msgs = [m for m in dict.fromkeys(msgs) if kss.needs_kss(m)][:200]
        same = sum(bench._cuts(kss.split_message(m)) == bench._cuts(split_rules(m)) for m in msgs)
        assert same / len(msgs) >= floor, (same, len(msgs))
