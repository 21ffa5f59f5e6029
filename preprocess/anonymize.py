"""Personal-data detectors: one pattern table, pure functions over it (see docs/personal-data.md).

A retrieval bot returns stored sentences verbatim, so whatever this module misses is served to
strangers. The rows' validators (checksums, dates, layouts, stop lists) are in
preprocess/pii_validators.py, the English name and phone finders in preprocess/pii_english.py;
what stays here is the table and the scanner that reads it, one idea in about 700 lines, most of
them the table's patterns. Every detector is one row of ``DETECTORS``::

    Detector(placeholder, pattern, validator, view=..., needs=..., cue=..., context=..., group=..., near=...)

Two views of a text are scanned:

* ``view="text"``: ``pattern.finditer`` over the text after a 1:1 compatibility mapping
  (full-width / mathematical / circled / superscript digits and letters -> ASCII, other decimal
  digits -> ASCII), so offsets map straight back and the original text outside a span is kept.
  ``validator(match_text)`` may reject a match; ``group`` picks the regex group that is the PII.
* ``view="digits"``: numbers. A *run* is a stretch of ASCII digits and Hangul digit syllables
  (공/영/빵=0 일=1 이=2 삼=3 사=4 오=5 육/륙=6 칠=7 팔=8 구=9; O/o/I/l next to a digit) joined by
  short separators (spaces, newlines, ``- . · _ , / ( ) ㅡ * ~ |``), with at least 8 digits. Candidates are pieces of a run
  that start and end on group boundaries (inside Hangul digit groups every syllable is a
  boundary); ``pattern.fullmatch`` runs on the digits only (``"01012345678"``) and
  ``validator`` gets the grouped form (``"010-1234-5678"``). Longest candidate first, rows in
  table order. This catches ``010 . 1234 . 5678``, ``0 1 0 1 2 3 4 5 6 7 8``,
  ``공일공 일이삼사 오육칠팔``, ``010-일이삼사-5678`` and ``０１０…``. Candidates containing Hangul
  digits count only if they start like a mobile number (``01…``), hold >= 4 ASCII digits, or
  follow a number cue (번호, 전화, 연락처, 폰, 계좌, 주민, ...): words such as 이사, 사이, 일이삼 survive.

``cue``: the row fires only with that regex within ``CUE_BEFORE`` chars before or ``CUE_AFTER``
after the match (bank accounts need 계좌/입금/은행 names...). ``context``: the whole text must match
(system lines, or a cheap literal pre-check before an expensive pattern). ``near``: alternative to
``cue``: a span of that placeholder nearby (postcodes next to an address). ``needs``: the cheap
gate, space-separated groups of characters, each group must occur ("#" any digit, "A" any Latin
letter). One regex pass computes a bit mask of the trigger characters in a text; the rows it
activates are cached per mask, so a typical chat line runs two or three regexes in all.

A row's ``pattern`` is a compiled regex, or an object with the same ``finditer`` that wraps a
library or a word list: ``LibraryPhones`` (Google's libphonenumber, the ``phonenumbers`` package:
numbers valid in their country's numbering plan and grouped as that country groups them, for
``PHONE_REGIONS``' national formats and any ``+``-prefixed international one) and ``EnglishNames``
(given names after "I'm", "my name is", "hi", "thanks", ...; the US census given-name list of the
``names`` package tells names from words in lower case) and ``EnglishMentions`` (someone spoken of:
after a title, "his name is", "my friend", "named", "this is").

English rows: SSN (``123-45-6789``; area 000, 666 and 9xx, group 00, serial 0000 are not SSNs;
9 digits in a row only near "SSN"/"social security") -> ``[RRN]``, the national-number
placeholder; IBAN (mod-97 check) -> ``[ACCOUNT]``; phone numbers: libphonenumber, plus NANP-shaped
``555-867-5309`` / ``(415) 555-2671`` (fictional and unassigned numbers too, which libphonenumber
rejects), ``+``/``00`` and 8-15 digits, and ``867-5309`` near "call"/"text"/"number";
street addresses (``221B Baker Street``, ``12 Main St.``: a number, capitalised words, a street
type) and a ZIP code after a state code (``CA 94043``) -> ``[POSTCODE]``.

Placeholders: ``[PHONE] [EMAIL] [URL] [RRN] [CARD] [ACCOUNT] [ADDRESS] [POSTCODE] [BIZNO] [LICENSE]
[PASSPORT] [PLATE] [IP] [NAME] [MENTION]`` (preprocess.schema.PLACEHOLDERS). ``[MENTION]`` is used for
``@handles`` and messenger IDs (a handle is not necessarily a person's name); ``[NAME]`` for names.
Placeholders already in a text are never PII (``contains_pii("[NAME]아")`` is False).

Names: ``Anonymizer(names)`` takes the participants' display names, expands them with
``name_variants`` and builds one alternation regex per conversation (longest first). Hangul
variants match anywhere (particles stay: ``민준아`` -> ``[NAME]아``); Latin variants need word
boundaries and are case-sensitive when capitalised. ``@mentions`` and IDs after 카톡/인스타/ID
cues become ``[MENTION]``; names in system lines and surname + 1-2 syllables before 씨/님 or after
이름은/저는...입니다 become ``[NAME]``, and so does any word said to be a name (이름은/닉네임은/별명은
X, then 이야/예요/입니다/라고...: 블레이크, 수지, Ali), unless it is a question word or a word about
the name (뭐, 비밀, 가명).

Overlaps: the first row in table order wins (same placeholder: the spans merge); participant
names come last.

Messenger handles after a platform's name ("my instagram is jane_doe99", "snap: wolfy94") become
``[MENTION]`` too ("is" only before a word shaped like a handle, with a digit, "_" or ".").

A given name called by it without a surname (민수야 뭐해?, 지현아) or so introduced (나는 민수야) becomes
``[NAME]`` through ``KoreanVocatives`` (preprocess.pii_korean): the word is read by Kiwi, Korean's
morphological analyser, as a proper noun and a vocative particle; 아니야, 괜찮아, 친구야 are not.
A name introduced with the copula after a first-person subject (난 조지야, 저는 제인이에요) through
``KoreanIntroductions``: Kiwi reads a proper noun and the copula; 나는 학생이야 passes.

Known limits (English): names with no cue ("Ethan said so"), after "I'm" in lower case when the
name is also a word ("i'm will"), or in a cue that ends its sentence ("Hey! Adam!"); a capitalised
word that closes a greeting is taken for a name ("HEY APPLE!"); a 3-3-4 grouped order number is
taken for a phone number.

Known limits: numbers written with native numerals (하나 둘 셋) or split by words; names that are
neither participants nor next to a cue (씨/님/이름은/저는...입니다/system lines) nor called by name
(민수야, 지현아: ``KoreanVocatives``, Kiwi's proper noun + vocative particle; a given name Kiwi takes
for a word, 재원아, passes); addresses without a
number below district level ("역삼동 살아"); order numbers that happen to pass Luhn (13-19 digits,
~10%) or look like a birth date + [1-8] (13 digits) are replaced too.
"""
from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Iterable, NamedTuple

from preprocess.pii_english import EnglishMentions, EnglishNames, LibraryPhones
from preprocess.pii_korean import KoreanIntroductions, KoreanVocatives
from preprocess.pii_validators import (account_ok, bizno_ok, card_ok, cue_name_ok, fine_num_ok, iban_ok, intl_ok, ip_ok,
                                       jibun_ok, landline_ok, license_ok, person_ok, postcode_ok, road_ok, rrn_ok,
                                       said_name_ok, service_ok, ssn_ok)

__all__ = ["Detector", "Span", "DETECTORS", "Anonymizer", "anonymize", "find_pii", "contains_pii",
           "name_variants"]

CUE_BEFORE = 24
CUE_AFTER = 16
# national formats libphonenumber reads (international ones, after +, it reads for any country)
PHONE_REGIONS = ("US",)


@dataclass(frozen=True)
class Detector:
    placeholder: str
    pattern: re.Pattern
    validator: Callable[[str], bool] | None = None
    view: str = "text"                  # "text" or "digits"
    needs: str = ""                     # gate: space-separated groups, each needs one of its chars
                                        # ("#" = any ASCII digit, "A" = any ASCII letter)
    cue: re.Pattern | None = None       # must occur near the match
    context: re.Pattern | None = None   # must occur anywhere in the text (or an object with such a search)
    group: int = 0                      # regex group holding the PII (text view)
    near: str | None = None             # or: a span of this placeholder nearby
    name: str = ""


class Span(NamedTuple):
    placeholder: str
    start: int
    end: int
    text: str


# ---------------------------------------------------------------------------------------------
# 1:1 compatibility mapping (offsets never move)

def _build_compat_table() -> dict[int, int]:
    table: dict[int, int] = {}
    ranges = [(0x00A0, 0x3400), (0xA000, 0xAC00), (0xFE00, 0x10000), (0x1D400, 0x1D800), (0x1F100, 0x1F200)]
    for lo, hi in ranges:
        for cp in range(lo, hi):
            ch = chr(cp)
            dec = unicodedata.decimal(ch, None)
            if dec is not None:
                table[cp] = ord(str(dec))
                continue
            n = unicodedata.normalize("NFKC", ch)
            if len(n) == 1 and n.isascii() and n != ch:
                table[cp] = ord(n)
    for dash in "\u2010\u2011\u2012\u2013\u2014\u2015\u2212\uff0d\ufe63":
        table[ord(dash)] = ord("-")
    table[0x3000] = 0x20
    table[0x00A0] = 0x20
    table[0x318D] = ord("·")
    return table


def _char_class(codepoints: Iterable[int]) -> str:
    ranges: list[list[int]] = []
    for c in sorted(codepoints):
        if ranges and ranges[-1][1] == c - 1:
            ranges[-1][1] = c
        else:
            ranges.append([c, c])
    return "".join(re.escape(chr(a)) if a == b else f"{re.escape(chr(a))}-{re.escape(chr(b))}" for a, b in ranges)


_COMPAT = _build_compat_table()
_UNCOMMON = re.compile("[^\x00-\x9f\uac00-\ud7a3\u3131-\u318e]")     # cheap first test
_COMPAT_RE = re.compile("[" + _char_class(c for c in _COMPAT if c < 0x10000) + "]|[\U00010000-\U0010ffff]")


def _view(text: str) -> str:
    """The text with compatibility characters mapped 1:1 to ASCII (offsets unchanged)."""
    if text.isascii() or not _UNCOMMON.search(text) or not _COMPAT_RE.search(text):
        return text
    return text.translate(_COMPAT)


# ---------------------------------------------------------------------------------------------
# the table

_D = re.compile


class _Contains:
    """A Detector context that is plain substrings (``in`` is several times faster than a regex)."""

    def __init__(self, *subs: str):
        self.subs = subs

    def search(self, text: str) -> bool | None:
        return True if any(s in text for s in self.subs) else None

_H = "공영빵일이삼사오육륙칠팔구"
_DIGIT_OF = {**{str(i): str(i) for i in range(10)}, "공": "0", "영": "0", "빵": "0", "일": "1", "이": "2", "삼": "3",
             "사": "4", "오": "5", "육": "6", "륙": "6", "칠": "7", "팔": "8", "구": "9"}
_SEP = r"\s\-.·_,/()ㅡ*~|"
_RUN = _D(rf"[0-9{_H}](?:[{_SEP}]{{0,4}}[0-9{_H}]){{7,}}")
_NUMBER_CUE = _D(r"번호|전화|연락|폰|핸드|휴대|문자|카톡|톡|계좌|통장|주민|카드|입금|송금|이체|번지|"
                 r"(?i:tel|phone|call|mobile|cell)")
_ACCOUNT_CUE = _D(r"계좌|입금|송금|이체|통장|예금주|은행|뱅크|국민|신한|우리|하나|농협|기업|카카오|토스|케이|카뱅|케뱅|"
                  r"새마을|우체국|수협|신협|씨티|대구|부산|경남|광주|전북|제주|산업|저축|SC|IBK|KB|NH|(?i:account|bank)")
_PHONE_CUE = _D(r"번호|전화|연락|폰|콜|문의|상담|대표|고객센터|(?i:tel|phone|call)")
_LICENSE_CUE = _D(r"면허")
_POSTCODE_CUE = _D(r"우편|우\)|\(우|(?i:zip|postal|post ?code)")
_SYSTEM_KO = _D(r"(?:들어왔습니다|나갔습니다|초대(?:했|하였)습니다|내보냈습니다|퇴장하셨습니다|입장하셨습니다)")
_SYSTEM_EN = _D(r"(?:joined|left|invited|removed)\b")
_URL_CTX = _D(r"://|www\.|WWW\.")
_JIBUN_CTX = _D(r"(?:시|군|구|도|서울|부산|대구|인천|광주|대전|울산|세종|경기|강원|충[남북]|전[남북]|경[남북]|제주)\s*[가-힣]{0,6}\d{0,2}[동읍면리가]")
_TLD_CTX = _D(r"\.(?:com|net|org|edu|gov|kr|me|ly|gl|gg|tv|to|co|io|[a-z]{2,7})(?![A-Za-z0-9-])")
_IP_CTX = _D(r"\d\.\d{1,3}\.\d{1,3}\.\d")
_PLATE_CTX = _D(r"\d\s?[가-힣]\s?\d{4}")
_PASSPORT_CTX = _D(r"[MSRODG]\d{3}")
_APT_CTX = _D(r"\d\s?동\s?\d{1,5}\s?호")
_ROAD_CTX = _D(r"[로길]\s?\d")
_LOT_CTX = _D(r"[동리]\s?\d|\d가\s?\d")

_TLD = (r"com|net|org|edu|gov|mil|int|kr|jp|cn|uk|de|fr|io|me|ly|gl|gg|tv|to|co|info|biz|xyz|app|dev|"
        r"site|page|link|so|ai|us|ca|au|in|ru|it|es|nl|be|ch|tk|ml|shop|store|online|top|club|live|"
        r"news|blog|kakao|naver|xn--[a-z0-9]+")
_SIDO = (r"(?:서울(?:특별)?시?|부산(?:광역)?시?|대구(?:광역)?시?|인천(?:광역)?시?|광주(?:광역)?시?|"
         r"대전(?:광역)?시?|울산(?:광역)?시?|세종(?:특별자치)?시?|경기도?|강원(?:특별자치)?도?|"
         r"충청[남북]도|충[남북]|전라[남북]도|전북(?:특별자치도)?|전[남북]|경상[남북]도|경[남북]|"
         r"제주(?:특별자치)?도?)")
_COARSE = rf"(?:{_SIDO}|[가-힣]{{1,6}}(?:시|군|구))"
_UNITS = (r"(?:\s?(?:분|시|초|개|명|번|원|살|세|년|월|일|주|달|회|등|위|점|배|장|권|잔|병|대|판|차|마리|"
          r"가지|키로|킬로|미터|[kcm]?m\b|kg|g\b|%|퍼|프로|만|천|백|억|도|줄|편|곡|쪽|페이지|시간|학년|반|"
          r"기|인분|박|세트|시즌|화|부|탄|층|단계|레벨|렙|개월|주년|년생|학번|위안|달러|엔|불))")
_TAIL = r"(?:,?\s*(?:\d{1,3}\s?층\s*)?(?:\d{1,4}\s?동\s*)?\d{1,5}\s?호)?"
_AFTER = r"(?=$|[\s,.)!?~]|에|으로|로|이|가|은|는|쪽|근처|입니다|예요|이에요|이야|야|요)"
_APT = r"(?:아파트|빌라|맨션|오피스텔|타워|하이츠|캐슬|자이|래미안|푸르지오|힐스테이트|아이파크|e편한세상|APT)"
_PLATE_LETTERS = "가나다라마거너더러머버서어저고노도로모보소오조구누두루무부수우주아바사자배하허호육해공국합"
_SURNAMES = ("김 이 박 최 정 강 조 윤 장 임 한 오 서 신 권 황 안 송 류 유 전 홍 고 문 양 손 배 백 허 남 심 노 "
             "하 곽 성 차 주 우 구 민 나 진 지 엄 채 원 천 방 공 현 함 변 염 여 추 도 소 석 선 설 마 길 연 위 "
             "표 명 기 반 왕 금 옥 육 인 맹 제 모 탁 국 어 은 편 용 예 경 봉 사 부 가 복 태 목 형 피 두 감 "
             "호 음 빈 동 온 시 범 좌 팽 승 간 상 갈 단 견 당 화 창 옥 순 빙 종 풍 라 량 려 로 리 륙").split()
_SURNAME_RE = "(?:남궁|제갈|선우|황보|독고|사공|서문|동방|[" + "".join(sorted(set(_SURNAMES))) + "])"

# what libphonenumber can find for PHONE_REGIONS = ("US",): a number after + (or 00, 011), or a
# NANP-shaped one (area code and exchange [2-9]xx); it costs ~50 us a line, so the rest never meets it
_LIB_PHONE_CTX = _D(r"(?:\+|(?<!\d)0(?:0|11)[\s.-]?)[\s(]?[1-9]|(?<!\d)\(?[2-9]\d\d\)?[\s.-]{0,2}[2-9]\d\d[\s.-]?\d{4}(?!\d)")
_SSN_CTX = _D(r"\d{3}[- ]\d\d[- ]\d{4}")
_NANP_CTX = _D(r"\d{3}[\s.)-]{1,2}\d{3}[\s.-]\d{4}")
_STREET_CTX = _D(r"\d[A-Za-z]?\s+(?:[A-Z]|\d{1,3}(?:st|nd|rd|th)\s)")
_US_STATES = ("AL AK AZ AR CA CO CT DE DC FL GA HI ID IL IN IA KS KY LA ME MD MA MI MN MS MO MT NE NV NH NJ NM "
              "NY NC ND OH OK OR PA RI SC SD TN TX UT VT VA WA WV WI WY").split()
_STREET = (r"(?:Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Parkway|Pkwy|Place|Pl|"
           r"Way|Terrace|Ter|Circle|Cir|Highway|Hwy|Square|Sq|Trail|Crescent|Close|Alley|Plaza|Loop|Pike)")
_PHONE_CUE_EN = _D(r"(?i:call|phone|cell|text|number|tel\b|reach|contact|whatsapp)")
_SSN_CUE = _D(r"(?i:ssn|social\s+security|social\s+sec|tax\s+id|itin)")

DETECTORS: tuple[Detector, ...] = (
    # --- text view ---------------------------------------------------------------------------
    Detector("[EMAIL]", _D(r"(?<![A-Za-z0-9.%+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,12}(?![A-Za-z0-9-])"),
             needs="@", name="email"),
    Detector("[EMAIL]", _D(r"(?<![A-Za-z0-9.%+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}\s?@\s?[A-Za-z0-9-]+(?:\s?\.\s?[A-Za-z0-9-]+)*\s?\.\s?(?:com|net|org|kr|io|me|edu)(?![A-Za-z0-9-])", re.I),
             needs="@", name="email-spaced"),
    Detector("[EMAIL]", _D(rf"(?<![A-Za-z0-9.])[A-Za-z0-9][A-Za-z0-9._%+-]{{0,63}}\s*(?:골뱅이|\(at\)|\[at\]|\(골뱅이\))\s*[A-Za-z0-9-]+\s*(?:\.|닷|점|\(dot\)|\[dot\]| dot )\s*(?:com|net|org|kr|co\.kr|io|me|edu)(?![A-Za-z0-9])", re.I),
             needs="골([ A", name="email-spelled"),
    Detector("[URL]", _D(r"(?i:\b(?:https?|ftp|hxxps?)://|\bwww\.)[^\s<>\"'{}\[\]]+(?<![.,!?)'\"~])"),
             needs=". A", context=_URL_CTX, name="url"),
    Detector("[URL]", _D(rf"(?<![A-Za-z0-9@.-])(?:[A-Za-z0-9](?:[A-Za-z0-9-]{{0,61}}[A-Za-z0-9])?\.)+(?:{_TLD})(?![A-Za-z0-9-])(?:/[^\s<>\"'{{}}\[\]]*(?<![.,!?)'\"~]))?"),
             needs=". A", context=_TLD_CTX, name="url-bare"),
    Detector("[IP]", _D(r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?![\d]|\.\d)"),
             ip_ok, needs=". #", context=_IP_CTX, name="ipv4"),
    Detector("[NAME]", _D(r"(?:^|(?<=[\s,]))(?!채팅방|방장|부방장|관리자)([^\s,@\[\]]{1,20}?)님(?=(?:이|을|과|께서|의)?[\s,.]|$)", re.M),
             context=_SYSTEM_KO, group=1, needs="님", name="system-ko"),
    # a whole line in the messenger's words: "X joined this chatroom.", "X has left.", "X invited Y."
    # (not "What is left?" or "we invited them")
    Detector("[NAME]", _D(r"^(?!(?:I|He|She|They|We|You|It|Who|What|Everyone|Everybody|Someone|Somebody|Nobody|One)\b)"
                          r"(\S[^.!?\n]{0,38}?)(?= (?:(?:joined|left) (?:this|the) (?:chat ?room|chat|group|conversation|room|"
                          r"open ?chat)|has (?:joined|left)(?: (?:this|the) (?:chat ?room|chat|group|conversation|room))?)\.?$"
                          r"| (?:invited|removed) (?!(?:me|you|him|her|us|them|it|my|your|his|our|their|the|a|an|all|everyone|some)\b)"
                          r"[^.!?\n]{1,120}?(?: (?:to|from) (?:this|the) (?:chat ?room|chat|group))?\.$)",
                          re.M),
             context=_SYSTEM_EN, group=1, needs="A", name="system-en"),
    Detector("[MENTION]", _D(r"(?<![\w.@])@[0-9A-Za-z가-힣][\w가-힣.\-]{1,29}(?<!\.)"), needs="@", name="mention"),
    Detector("[MENTION]", _D(r"(?:카톡|카카오톡|아이디|인스타|인스타그램|라인|텔레그램|트위터|디엠)\s*(?:아이디|id|ID)?\s*(?:은|는|:|=)?\s*:?\s*([A-Za-z][A-Za-z0-9._-]{2,29})(?![A-Za-z0-9])"),
             group=1, needs="톡디스텔트 A", name="handle"),
    Detector("[MENTION]", _D(r"(?=[KkIiTtSsDdUuGgPpWwLl])(?<![A-Za-z])(?i:kakao ?id|kakaotalk|insta(?:gram)?|ig|telegram|twitter|snap(?:chat)?|tiktok|discord|"
                             r"user ?name|gamertag|psn|steam|skype|wechat|line ?id|id)(?:\s*[:=]\s*|\s+is\s+@?"
                             # after "is", only what is shaped like a handle ("my ig is jane_doe99", not "is private")
                             r"(?=[A-Za-z][A-Za-z0-9]*(?:[._-][A-Za-z0-9]|\d)))([A-Za-z][A-Za-z0-9._-]{2,29})(?<![._-])(?![A-Za-z0-9])"),
             group=1, needs="A", context=_Contains(":", "=", " is "), name="handle-en"),
    Detector("[PASSPORT]", _D(r"(?<![A-Za-z0-9])[MSRODG](?:\d{3}[A-Z]\d{4}|\d{8})(?![A-Za-z0-9])"), needs="# A", context=_PASSPORT_CTX, name="passport"),
    Detector("[PLATE]", _D(rf"(?<![\d가-힣])(?:{_SIDO}\s?)?\d{{2,3}}\s?[{_PLATE_LETTERS}]\s?\d{{4}}(?!\d)"), needs="#", context=_PLATE_CTX, name="plate"),
    Detector("[ADDRESS]", _D(rf"(?<![가-힣A-Za-z])(?:{_COARSE}\s*){{0,3}}[가-힣0-9]{{1,12}}(?:로|길)\s?(?:\d{{1,4}}번?[가나다]?길\s?)?\d{{1,4}}(?:-\d{{1,4}})?(?!\d|[.:,]\d){_TAIL}(?!{_UNITS}){_AFTER}"),
             road_ok, needs="# 로길", context=_ROAD_CTX, name="road"),
    Detector("[ADDRESS]", _D(rf"(?<![가-힣])(?:{_COARSE}\s*){{1,3}}(?:(?:[가-힣]{{1,6}}\d{{0,2}}동|[가-힣]{{1,4}}(?:읍|면|리)|[가-힣]{{1,4}}\d가)\s*){{1,2}}(?<!\s)(?:\s?\d{{1,5}}(?:-\d{{1,4}})?(?:번지)?(?!\d){_TAIL})?(?:(?![가-힣])|(?=에|으로|이|쪽|근처|인데|이야|이에요|입니다|살|사|쯤|부근|주민))"),
             jibun_ok, needs="동읍면리", context=_JIBUN_CTX, name="jibun"),
    Detector("[ADDRESS]", _D(rf"(?<![가-힣])(?:[가-힣]{{1,8}}\d{{0,2}}(?:동|리)|[가-힣]{{1,4}}\d가)\s?(?:\d{{2,5}}(?:-\d{{1,4}})?|\d{{1,5}}-\d{{1,4}}|\d{{1,5}}번지)(?!\d|[.:,]\d){_TAIL}(?!{_UNITS}){_AFTER}"),
             fine_num_ok, needs="# 동리", context=_LOT_CTX, name="lot"),
    Detector("[ADDRESS]", _D(rf"(?:[가-힣A-Za-z0-9]{{0,15}}{_APT}\s*)?(?<!\d)\d{{1,4}}\s?동\s?\d{{1,5}}\s?호"), needs="# 호", context=_APT_CTX, name="apartment"),
    Detector("[POSTCODE]", _D(r"(?<![\d-])\d{5}(?![\d-])"), postcode_ok, cue=_POSTCODE_CUE, near="[ADDRESS]",
             needs="#", name="postcode"),
    Detector("[NAME]", _D(rf"(?<![가-힣])({_SURNAME_RE}[가-힣]{{1,2}}?)(?=\s?(?:씨|님)(?![가-힣]{{0,1}}(?:께서|이|을|의|은|는)?[가-힣]))"),
             person_ok, group=1, needs="씨님", name="surname-honorific"),
    Detector("[NAME]", _D(rf"(?:이름이\s+|이름은|이름:|성함은|성함:)\s*({_SURNAME_RE}[가-힣]{{1,2}}?)(?=입니다|이에요|예요|이야|야|이고|이라고|라고|임|요|\s|$|[.,!])"),
             cue_name_ok, group=1, needs="름함", name="name-cue"),
    # what a name is said to be, any name: "내 이름은 블레이크야", "친구 이름은 수지라고 해", "닉네임은 wolf94야",
    # "내 이름은 클레터스 허클베리야" (two Hangul words)
    Detector("[NAME]", _D(r"(?:이름|닉네임|별명)(?:은|는|이)\s*([가-힣]{1,6}?(?: [가-힣]{1,6}?)?|[A-Za-z][A-Za-z0-9_'-]{0,19})"
                          r"(?=이야|야|입니다|이에요|예요|이고|이라고|라고|(?:이래|래)요?(?![가-힣])|이었|였|임(?![가-힣]))"),
             said_name_ok, group=1, needs="름닉별", name="name-said"),
    Detector("[NAME]", _D(rf"(?<![가-힣])(?:저는|나는)\s+({_SURNAME_RE}[가-힣]{{1,2}}?)(?=입니다|이에요|예요|이라고 (?:해|합)|라고 (?:해|합))"),
             person_ok, group=1, needs="입예라", context=_D("(?:저|나)는\\s"), name="self-intro"),
    # a given name called by it (민수야, 지현아) or introduced so (나는 민수야): Kiwi reads NNP + JKV
    Detector("[NAME]", KoreanVocatives(), needs="아야", name="name-ko-vocative"),
    # a name introduced with the copula after a first-person subject (난 조지야, 저는 제인이에요): Kiwi reads NNP + VCP
    Detector("[NAME]", KoreanIntroductions(), needs="야요다", context=_D("(?:나는|난|저는|전)\\s"), name="name-ko-intro"),
    # --- English: national numbers, IBAN, phones, street addresses, given names -----------------
    Detector("[RRN]", _D(r"(?<![\d-])\d{3}([- ])\d{2}\1\d{4}(?![\d-])"), ssn_ok, needs="#", context=_SSN_CTX, name="ssn"),
    Detector("[RRN]", _D(r"(?<!\d)\d{9}(?!\d)"), ssn_ok, needs="#", cue=_SSN_CUE, context=_D(r"\d{9}"), name="ssn-cued"),
    Detector("[ACCOUNT]", _D(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?:[A-Z0-9]{11,30}|(?: [A-Z0-9]{4})"
                             r"(?: (?=[A-Z]{0,3}\d)[A-Z0-9]{4}){1,6}(?: (?=[A-Z]{0,2}\d)[A-Z0-9]{1,3})?)(?![A-Za-z0-9])"),
             iban_ok, needs="# A", context=_D(r"[A-Z]{2}\d\d"), name="iban"),
    Detector("[PHONE]", LibraryPhones(PHONE_REGIONS), needs="#", context=_LIB_PHONE_CTX, name="phone-lib"),
    Detector("[PHONE]", _D(r"(?<![\w+.-])(?:\+?1[ .-]?)?(?:\(\d{3}\) ?|\d{3}[ .-])\d{3}[ .-]\d{4}(?![\w-]|\.\d)"),
             needs="#", context=_NANP_CTX, name="phone-nanp"),
    Detector("[PHONE]", _D(r"(?<![\w+])(?:\+|\b00(?=[1-9]))\d{1,3}(?:[ .-]?\(?\d{1,5}\)?){2,5}(?![\w-]|\.\d)"), intl_ok,
             needs="#", context=_D(r"\+\s?\(?\d|00[1-9]"), name="phone-plus"),
    Detector("[PHONE]", _D(r"(?<![\w.-])\d{3}-\d{4}(?![\w-]|\.\d)"), needs="#", cue=_PHONE_CUE_EN, context=_D(r"\d{3}-\d{4}"), name="phone-local"),
    Detector("[ADDRESS]", _D(rf"(?<![\w-])\d{{1,5}}[A-Za-z]?(?:-\d{{1,4}})?\s+(?:(?:[NSEW]\.?|North|South|East|West)\s+)?"
                             rf"(?:(?:[A-Z][a-z]+|\d{{1,3}}(?:st|nd|rd|th))\s+){{1,3}}(?:{_STREET}|(?i:street|avenue|road|boulevard|lane|drive|parkway))\b"
                             rf"(?:\s+(?:NW|NE|SW|SE)\b)?(?:,?\s*(?:Apt|Apartment|Suite|Ste|Unit|#)\.?\s*#?[A-Za-z0-9-]+)?"),
             needs="# A", context=_STREET_CTX, name="street-en"),
    Detector("[POSTCODE]", _D(rf"(?<![A-Za-z])(?:{'|'.join(_US_STATES)})\s+(\d{{5}}(?:-\d{{4}})?)(?![\d-])"),
             group=1, needs="# A", context=_D(r"[A-Z]{2}\s+\d{5}"), name="zip-us"),
    Detector("[NAME]", EnglishNames(), needs="A", name="name-en"),
    Detector("[NAME]", EnglishMentions(), needs="A", name="name-en-mention"),
    # --- digit view (pattern: digits only, validator: grouped "010-1234-5678") ------------------
    Detector("[PHONE]", _D(r"01[016789]\d{7,8}"), view="digits", name="mobile"),
    Detector("[PHONE]", _D(r"82(?:0?1[016789]\d{7,8}|0?(?:2|[3-6][1-5]|70)\d{7,8})"), view="digits", name="phone-intl"),
    Detector("[RRN]", _D(r"\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])[1-8]\d{6}"), rrn_ok, view="digits", name="rrn"),
    Detector("[ACCOUNT]", _D(r"\d{10,14}"), account_ok, view="digits", cue=_ACCOUNT_CUE, name="account"),
    Detector("[CARD]", _D(r"\d{13,19}"), card_ok, view="digits", name="card"),
    Detector("[PHONE]", _D(r"0(?:2|[3-6][1-5])\d{7,8}|070\d{8}|050\d{8,9}"), landline_ok, view="digits", name="landline"),
    Detector("[PHONE]", _D(r"0(?:2|[3-6][1-5])\d{7,8}|1[568]\d{6}"), view="digits", cue=_PHONE_CUE, name="phone-cued"),
    Detector("[PHONE]", _D(r"1[568]\d{6}"), service_ok, view="digits", name="service"),
    Detector("[BIZNO]", _D(r"\d{10}"), bizno_ok, view="digits", name="bizno"),
    Detector("[LICENSE]", _D(r"\d{12}"), license_ok, view="digits", name="license"),
    Detector("[LICENSE]", _D(r"(?:1[1-9]|2[0-8])\d{10}"), view="digits", cue=_LICENSE_CUE, name="license-cued"),
)

_PLACEHOLDER_RE = re.compile(r"\[(?:" + "|".join(p.strip("[]") for p in (
    "[NAME]", "[PHONE]", "[EMAIL]", "[URL]", "[RRN]", "[CARD]", "[ACCOUNT]", "[ADDRESS]", "[POSTCODE]",
    "[BIZNO]", "[LICENSE]", "[PASSPORT]", "[PLATE]", "[IP]", "[MENTION]")) + r")\]")


# ---------------------------------------------------------------------------------------------
# scanning

def _overlaps(spans: list, s: int, e: int, ph: str = "", grow_any: bool = False) -> bool:
    """True if [s, e) overlaps a span already taken; a span of the same placeholder (or any span,
    with ``grow_any``) grows to the union instead (participant "박영우 소마" over the surname rule's
    "소마"; "@Jane Doe" where the mention rule took only "@Jane")."""
    for k, (a, b, p) in enumerate(spans):
        if s < b and a < e:
            if p == ph or grow_any:
                spans[k] = (min(a, s), max(b, e), p)
            return True
    return False


def _cue_near(cue: re.Pattern, view: str, s: int, e: int) -> bool:
    return cue.search(view, max(0, s - CUE_BEFORE), s) is not None or cue.search(view, e, e + CUE_AFTER) is not None


_RUN_GATE = "#공영빵번화락폰휴핸좌통민카톡금체"   # digits, or Hangul digits that may start a number / a cue


def _build_gates():
    """Each distinct gate group ("# 로길" has two) gets one bit; each trigger character sets the bits
    of the groups it satisfies, so a text's mask is small and the active rows can be cached."""
    groups = sorted({g for d in DETECTORS for g in d.needs.split()} | {_RUN_GATE})
    bit_of_group = {g: 1 << k for k, g in enumerate(groups)}
    char_bits: dict[str, int] = {}
    for g, bit in bit_of_group.items():
        for c in g:
            members = "0123456789" if c == "#" else \
                "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ" if c == "A" else c
            for m in members:
                char_bits[m] = char_bits.get(m, 0) | bit
    plan = []
    for d in DETECTORS:
        if d.view == "text":
            req = 0
            for g in d.needs.split():
                req |= bit_of_group[g]
            plan.append((d, req))
    return char_bits, bit_of_group[_RUN_GATE], tuple(plan)


_CHAR_BITS, _RUN_MASK, _TEXT_PLAN = _build_gates()
_LATIN_BITS = _CHAR_BITS["a"]      # every ASCII letter sets the same bits ("A" groups)
_DIGIT_BITS = _CHAR_BITS["0"]      # every ASCII digit too ("#" groups)
_SPECIAL_RE = re.compile("[" + re.escape("".join(c for c in _CHAR_BITS if not c.isascii() or not c.isalnum())) + "]")
_LATIN_RE = re.compile("[A-Za-z]")
_DIGIT_RE = re.compile("[0-9]")


# Cheap necessary conditions in front of slow cue regexes (inline flags defeat re's first-character
# scan). Every alternative of _POSTCODE_CUE holds 우편, 우), (우, a z, or a p followed by an o, and
# under (?i:) only z/Z, p/P and o/O match those letters (checked over every code point).
_PO = re.compile("[Pp][Oo]")
_PRECHECK: dict[re.Pattern, Callable[[str], bool]] = {
    _POSTCODE_CUE: lambda v: ("우편" in v or "우)" in v or "(우" in v or "z" in v or "Z" in v
                              or _PO.search(v) is not None),
}
_PLAN_CACHE: dict[int, tuple] = {}


def _active(mask: int) -> tuple[Detector, ...]:
    """The text-view rows whose gates this text passes."""
    return tuple(d for d, req in _TEXT_PLAN if mask & req == req)


def _step(d: Detector) -> tuple:
    """A detector as the tuple _scan_text runs (no attribute look-ups per text)."""
    gate = None
    if d.cue is not None:
        pre = _PRECHECK.get(d.cue)
        gate = d.cue.search if pre is None else (lambda v, _p=pre, _c=d.cue.search: _p(v) and _c(v))
    return (d.context.search if d.context is not None else None, d.cue is not None or d.near is not None,
            gate, d.near, d.pattern.finditer, d.group, d.validator, d.cue, d.placeholder)


def _plan(mask: int) -> tuple:
    plan = _PLAN_CACHE.get(mask)
    if plan is None:
        plan = _PLAN_CACHE[mask] = tuple(_step(d) for d in _active(mask))
    return plan


def _text_mask(view: str) -> int:
    mask = _LATIN_BITS if _LATIN_RE.search(view) else 0
    if _DIGIT_RE.search(view):
        mask |= _DIGIT_BITS
    bits = _CHAR_BITS
    for c in _SPECIAL_RE.findall(view):
        mask |= bits[c]
    return mask


def _scan_text(view: str, spans: list, mask: int) -> None:
    for context, gated, cue_search, near, finditer, group, validator, cue, ph in _plan(mask):
        if context is not None and context(view) is None:
            continue
        if gated and not (cue_search is not None and cue_search(view)) \
                and not (spans and any(p == near for _, _, p in spans)):
            continue
        for m in finditer(view):
            s, e = m.span(group)
            if s >= e:
                continue
            if validator is not None and not validator(m.group(group)):
                continue
            if gated:
                ok = cue is not None and _cue_near(cue, view, s, e)
                if not ok and near is not None:
                    ok = any(p == near and a - 12 <= e and s <= b + 12 for a, b, p in spans)
                if not ok:
                    continue
            if not _overlaps(spans, s, e, ph):
                spans.append((s, e, ph))


_DIGIT_TOKEN = re.compile(f"[0-9]+|[{_H}]")


def _widths(p: re.Pattern) -> tuple[int, int]:
    """(min, max) length a digit-view pattern can match, to skip candidates without a regex call."""
    try:
        from re import _parser    # 3.11+
        lo, hi = _parser.parse(p.pattern).getwidth()
        return lo, min(hi, 19)
    except Exception:             # pragma: no cover - another Python
        return 8, 19


_DIGIT_PLAN = tuple((d, *_widths(d.pattern)) for d in DETECTORS if d.view == "digits")


_LOOKALIKE = re.compile(r"(?<=[0-9])[OoIl]|[OoIl](?=[0-9])")
_LOOKALIKE_MAP = {"O": "0", "o": "0", "I": "1", "l": "1"}


def _scan_digits(view: str, spans: list) -> None:
    if spans:   # hide what the text view already took
        chars = list(view)
        for a, b, _ in spans:
            chars[a:b] = "\x00" * (b - a)
        view = "".join(chars)
    if _LATIN_RE.search(view):   # "O1O-1234-5678": letters posing as digits
        view = _LOOKALIKE.sub(lambda m: _LOOKALIKE_MAP[m.group()], view)
    for m in _RUN.finditer(view):
        # digits of the run, their offsets, Hangul flags; group breaks and allowed cut points
        digits: list[str] = []
        pos: list[int] = []
        hangul: list[bool] = []
        breaks = set()
        cuts = set()
        prev_end, prev_h = -1, None
        for t in _DIGIT_TOKEN.finditer(view, m.start(), m.end()):
            k, tok = t.start(), t.group()
            h = tok[0] > "9"
            idx = len(digits)
            if k != prev_end or h != prev_h:
                breaks.add(idx)
            cuts.add(idx)
            if h:
                digits.append(_DIGIT_OF[tok])
                pos.append(k)
            else:
                digits.extend(tok)
                pos.extend(range(k, k + len(tok)))
            hangul.extend([h] * len(tok))
            prev_end, prev_h = t.end(), h
        n = len(digits)
        breaks.add(n)
        cuts.add(n)
        cut_list = sorted(cuts)
        break_list = sorted(breaks)
        D = "".join(digits)
        cued: dict = {}      # cue regex -> found near this run (computed on first need)
        ci = 0
        while ci < len(cut_list) - 1:
            i = cut_list[ci]
            ends = [j for j in reversed(cut_list) if 8 <= j - i <= 19]
            hit = None
            for det, lo, hi in _DIGIT_PLAN if ends else ():
                for j in ends:
                    if not lo <= j - i <= hi:
                        continue
                    if det.cue is not None:
                        if det.cue not in cued:
                            cued[det.cue] = _cue_near(det.cue, view, m.start(), m.end())
                        if not cued[det.cue]:
                            break
                    d = D[i:j]
                    if not det.pattern.fullmatch(d):
                        continue
                    s, e = pos[i], pos[j - 1] + 1
                    n_h = sum(hangul[i:j])
                    if n_h and not d.startswith("01") and (j - i - n_h) < 4 \
                            and not _cue_near(_NUMBER_CUE, view, s, e):
                        continue
                    if det.validator is not None:
                        cut_at = [b for b in break_list if i <= b <= j]
                        if cut_at[0] != i:
                            cut_at.insert(0, i)
                        if cut_at[-1] != j:
                            cut_at.append(j)
                        if not det.validator("-".join(D[a:b] for a, b in zip(cut_at, cut_at[1:]))):
                            continue
                    hit = (det, j, s, e)
                    break
                if hit:
                    break
            if hit is None:
                ci += 1
                continue
            det, j, s, e = hit
            if s > 0 and view[s - 1] == "+":
                s -= 1
            elif s > 0 and view[s - 1] == "(" and ")" in view[s:e]:
                s -= 1
            if not _overlaps(spans, s, e, det.placeholder):
                spans.append((s, e, det.placeholder))
            ci = cut_list.index(j)


def _scan(text: str, names_re: re.Pattern | None = None) -> list[tuple[int, int, str]]:
    # _view and _text_mask, inlined (this runs once per message)
    if text.isascii() or not _UNCOMMON.search(text) or not _COMPAT_RE.search(text):
        view = text
    else:
        view = text.translate(_COMPAT)
    mask = _LATIN_BITS if _LATIN_RE.search(view) else 0
    if _DIGIT_RE.search(view):
        mask |= _DIGIT_BITS
    for c in _SPECIAL_RE.findall(view):
        mask |= _CHAR_BITS[c]
    spans: list[tuple[int, int, str]] = []
    if mask:
        _scan_text(view, spans, mask)
        if mask & _RUN_MASK and _RUN.search(view):
            _scan_digits(view, spans)
    if names_re is not None:
        for m in names_re.finditer(view):
            s, e = m.span()
            if (m.group(0)[0].isascii() and s > 0 and view[s - 1].isalnum()) or \
                    (m.group(0)[-1].isascii() and e < len(view) and view[e].isascii() and view[e].isalnum()):
                continue
            if not _overlaps(spans, s, e, "[NAME]", grow_any=True):
                spans.append((s, e, "[NAME]"))
    if not spans:
        return spans
    # placeholders already in the text are not PII
    if "[" in text:
        ph = [(m.start(), m.end()) for m in _PLACEHOLDER_RE.finditer(text)]
        spans = [sp for sp in spans if not any(a <= sp[0] and sp[1] <= b for a, b in ph)]
    spans.sort()
    for k in range(len(spans) - 1, 0, -1):     # merged same-type spans may now touch others
        if spans[k][0] < spans[k - 1][1]:
            a, b, p = spans[k - 1]
            spans[k - 1] = (a, max(b, spans[k][1]), p)
            del spans[k]
    return spans


# ---------------------------------------------------------------------------------------------
# names

_GENERIC_NAMES = frozenset(
    "you me i 나 너 저 회원님 회원 방장 부방장 알수없음 unknown 익명 사용자 user admin 관리자 system 시스템 "
    "카카오톡 kakaotalk 오픈채팅봇 봇 bot 님 본인 상대방 친구 남자 여자 남 여 학생 직장인 대학생 고딩 중딩 "
    "초딩 대딩 취준생 백수 주부 미정 비밀 없음 무 the a an and of to my our mr mrs ms dr ok hi no so us we he "
    "it is do go up on in at or by be as if".split())
_SIDO_RE = re.compile(rf"{_SIDO}")


def name_variants(display_name: str) -> set[str]:
    """The strings under which a participant may appear in text.

    ``"김민준/94/늑대"`` -> ``{"김민준/94/늑대", "김민준", "민준", "늑대"}``; ``"박영우 소마"`` ->
    ``{"박영우 소마", "박영우", "영우", "소마"}``; ``"최수빈🐰"`` -> ``{"최수빈🐰", "최수빈", "수빈"}``.
    Numbers, 1-syllable parts, region names and generic
    words ("you", "회원님", "방장", "알 수 없음") are dropped."""
    out: set[str] = set()
    raw = unicodedata.normalize("NFKC", display_name or "").strip()
    if not raw:
        return out
    # any character that is neither a letter nor a digit separates parts: "최수빈🐰" (an emoji, a
    # variation selector, a zero-width joiner) is 최수빈 as surely as "김민준/94" is 김민준
    parts = [p for p in re.split(r"[^\w']+|_", raw) if p]

    def ok(p: str) -> bool:
        if p.lower() in _GENERIC_NAMES or p.isdigit():
            return False
        if not re.search(r"[가-힣A-Za-z]", p):
            return False
        if re.fullmatch(r"[가-힣]+", p) and (len(p) < 2 or _SIDO_RE.fullmatch(p)):
            return False
        if re.fullmatch(r"[A-Za-z]+", p) and len(p) < 2:
            return False
        return True

    keep_raw = parts != [raw] and raw.lower() not in _GENERIC_NAMES  # the display name is more than its one part
    for p in parts:
        p = re.sub(r"님$", "", p) if len(p) > 2 and re.fullmatch(r"[가-힣]+님", p) else p
        if not ok(p):
            continue
        out.add(p)
        if re.fullmatch(r"[가-힣]{3}", p) and p[0] in _SURNAMES:
            out.add(p[1:])
        elif re.fullmatch(r"[가-힣]{4}", p) and p[:2] in ("남궁", "제갈", "선우", "황보", "독고", "사공", "서문", "동방"):
            out.add(p[2:])
        m = re.fullmatch(r"([A-Za-z]{3,})\d+", p)
        if m:
            out.add(m.group(1))
    if keep_raw and out:
        out.add(raw)
    return out


def _names_regex(names: Iterable[str]) -> re.Pattern | None:
    variants: set[str] = set()
    for n in names:
        for v in name_variants(n):
            variants.add(v)
            if v.isascii():  # "Jane" is also written "jane" and "JANE": privacy before precision
                variants.update({v.lower(), v.capitalize(), v.upper()})
    if not variants:
        return None
    alts = sorted(variants, key=lambda v: (-len(v), v))
    return re.compile("|".join(re.escape(v) for v in alts))


# ---------------------------------------------------------------------------------------------
# public API

_new_counter = Counter.__new__


class Anonymizer:
    """Replace personal data with typed placeholders; ``names`` = the conversation's display names."""

    def __init__(self, names: Iterable[str] = ()):
        self.names = [n for n in names if n]
        self._names_re = _names_regex(self.names)

    def find(self, text: str) -> list[Span]:
        return [Span(ph, s, e, text[s:e]) for s, e, ph in _scan(text, self._names_re)]

    def anonymize(self, text: str) -> tuple[str, Counter]:
        counts: Counter = _new_counter(Counter)    # Counter() without its Python-level __init__
        text, spans = self.replace(text)
        for _, _, ph in spans:
            counts[ph] += 1
        return text, counts

    def replace(self, text: str) -> tuple[str, list[tuple[int, int, str]]]:
        """(anonymized text, the replaced (start, end, placeholder) spans of ``text``): anonymize()
        without a Counter per call, for callers that count in bulk (the pipeline)."""
        if not text:
            return text, []
        spans = _scan(text, self._names_re)
        if not spans:
            return text, spans
        out: list[str] = []
        last = 0
        for s, e, ph in spans:
            out.append(text[last:s])
            out.append(ph)
            last = e
        out.append(text[last:])
        return "".join(out), spans


def anonymize(text: str, names: Iterable[str] = ()) -> str:
    return Anonymizer(names).anonymize(text)[0]


def find_pii(text: str, names: Iterable[str] = ()) -> list[Span]:
    return Anonymizer(names).find(text)


def contains_pii(text: str) -> bool:
    """True if any row of DETECTORS still fires on ``text`` (placeholders do not count)."""
    return bool(text) and bool(_scan(text))
