"""Normalization: a table of real-looking chat lines, soynlp agreement, and properties."""
from __future__ import annotations

import re
import unicodedata
import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from preprocess.normalize import normalize, split_emoticons, to_one_line

CASES = [
    ("ㅋㅋㅋㅋㅋ 진짜 웃기다", "ㅋㅋ 진짜 웃기다"),
    ("와하하하하하", "와하하"),
    ("ㅋㅋㅋ 세 번은 그대로", "ㅋㅋㅋ 세 번은 그대로"),
    ("ㅋㅋ쿠ㅜㅜ", "ㅋㅋㅋㅜㅜㅜ"),
    ("갘ㅋㅋ", "가ㅋㅋㅋ"),
    ("진짜ㅋㅋㅋ", "진짜ㅋㅋㅋ"),                    # soynlp 0.0.493 returns 진ㅋㅋㅋ
    ("ㅎㅎㅎ웃겨", "ㅎㅎㅎ웃겨"),                    # soynlp returns ㅎㅎ겨
    ("010-1111-1111 로 전화해", "010-1111-1111 로 전화해"),   # soynlp returns 010-11-11
    ("1000000원 보냈어", "1000000원 보냈어"),         # soynlp returns 100원
    ("첫 줄\r\n둘째 줄\n\n셋째", "첫 줄 둘째 줄 셋째"),
    ("  탭\t과\u00a0nbsp\u3000전각  ", "탭 과 nbsp 전각"),
    ("zero\u200bwidth\ufeff", "zerowidth"),
    ("Sooooo good!!!!", "Soo good!!!!"),
    ("[NAME]아 ㅠㅠㅠㅠㅠ", "[NAME]아 ㅠㅠ"),
]


@pytest.mark.parametrize("raw,expected", CASES)
def test_normalize_table(raw, expected):
    assert normalize(raw) == expected


def test_nfc_never_nfd():
    nfd = unicodedata.normalize("NFD", "한국어 채팅")
    assert len(nfd) > len("한국어 채팅")
    assert normalize(nfd) == "한국어 채팅"


def test_agrees_with_soynlp_where_soynlp_keeps_the_text():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from soynlp.normalizer import repeat_normalize
    for raw in ["ㅋㅋㅋㅋㅋㅋ 와하하하하하", "ㅠㅠㅠㅠ 슬프다", "아아아아아아", "hello wooooorld", "ㅇㅇ 그래"]:
        assert normalize(raw) == repeat_normalize(raw, num_repeats=2)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ㅋㅎㅠㅜ쿠큐하갘진짜웃 \n\t0123456789.abc")), max_size=40))
def test_properties(raw):
    out = normalize(raw)
    assert "\n" not in out and "\t" not in out and "  " not in out and out == out.strip()
    assert unicodedata.is_normalized("NFC", out)
    assert re.sub(r"\D", "", out) == re.sub(r"\D", "", raw)        # digits are never touched
    assert split_emoticons(out).count(" ") == out.count(" ")
    assert to_one_line(out) == out
