"""Personal-data detectors: one pattern table, pure functions over it (see docs/personal-data.md).

A retrieval bot returns stored sentences verbatim, so whatever this module misses is served to
strangers. Every detector is one row of ``DETECTORS``::

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
``names`` package tells names from words in lower case).

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
이름은/저는...입니다 become ``[NAME]``.

Overlaps: the first row in table order wins (same placeholder: the spans merge); participant
names come last.

Known limits (English): names with no cue ("Ethan said so"), after "I'm" in lower case when the
name is also a word ("i'm will"), or in a cue that ends its sentence ("Hey! Adam!"); a capitalised
word that closes a greeting is taken for a name ("HEY APPLE!"); a 3-3-4 grouped order number is
taken for a phone number.

Known limits: numbers written with native numerals (하나 둘 셋) or split by words; names that are
neither participants nor next to a cue (씨/님/이름은/저는...입니다/system lines); addresses without a
number below district level ("역삼동 살아"); order numbers that happen to pass Luhn (13-19 digits,
~10%) or look like a birth date + [1-8] (13 digits) are replaced too.
"""
from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Iterable, NamedTuple

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
    context: re.Pattern | None = None   # must occur anywhere in the text
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
# validators

def luhn_ok(digits: str) -> bool:
    d = [int(c) for c in digits if c.isdigit()]
    total = 0
    for k, x in enumerate(reversed(d)):
        if k % 2:
            x *= 2
            if x > 9:
                x -= 9
        total += x
    return total % 10 == 0 and len(set(d)) > 1


_MONTH_DAYS = (0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def date_ok(yymmdd: str) -> bool:
    mm, dd = int(yymmdd[2:4]), int(yymmdd[4:6])
    return 1 <= mm <= 12 and 1 <= dd <= _MONTH_DAYS[mm]


def _digits(s: str) -> str:
    return s.replace("-", "")


def _groups(s: str) -> tuple[int, ...]:
    return tuple(len(g) for g in s.split("-"))


def _layout_ok(g: str) -> bool:
    """One group, all groups >= 2 digits, or one digit each (the spaced bypass); a run such as
    "1 2 3 ... 10 11 12" (counting) mixes them."""
    sizes = _groups(g)
    return len(sizes) == 1 or min(sizes) >= 2 or max(sizes) == 1


def _rrn_ok(g: str) -> bool:
    sizes = _groups(g)
    return (len(sizes) == 1 or max(sizes) == 1 or (sizes[0] == 6 and min(sizes) >= 2)) and date_ok(_digits(g)[:6])


def _card_ok(g: str) -> bool:
    sizes = _groups(g)
    return (len(sizes) == 1 or min(sizes) >= 3 or max(sizes) == 1) and luhn_ok(_digits(g))


def _account_ok(g: str) -> bool:
    return _layout_ok(g) and len(set(_digits(g))) > 2


def _landline_ok(g: str) -> bool:
    sizes = _groups(g)
    return len(sizes) == 1 or (len(sizes) == 3 and sizes[0] in (2, 3) and sizes[1] in (3, 4)
                               and sizes[2] == 4) or _digits(g)[:3] in ("070", "050")


def _service_ok(g: str) -> bool:
    return _groups(g) == (4, 4)


def _bizno_ok(g: str) -> bool:
    return _groups(g) == (3, 2, 5)


def _license_ok(g: str) -> bool:
    return _groups(g) == (2, 2, 6, 2) and 11 <= int(g[:2]) <= 28


def _ip_ok(s: str) -> bool:
    parts = s.split(".")
    return any(len(p) > 1 for p in parts)     # "1.2.3.4" is a version, "10.0.0.1" an address


_ROAD_STOP = frozenset(
    "바로 새로 서로 따로 진짜로 정말로 실제로 별로 주로 절대로 그대로 이대로 저대로 요대로 마음대로 맘대로 대로 "
    "함부로 억지로 스스로 도로 일부러 혼자로 거꾸로 멋대로 제멋대로 차로 택시로 버스로 기차로 카드로 현금로 "
    "출근길 퇴근길 등굣길 하굣길 등교길 하교길 산책길 귀갓길 귀가길 지름길 오솔길 눈길 발길 손길 빗길 밤길 뱃길 "
    "가는길 오는길 이길 그길 저길 길 꽃길 흙길 돌길 먼길 갈길 집길 시골길 고갯길 내리막길 오르막길".split())


def _road_ok(s: str) -> bool:
    m = re.search(r"([가-힣0-9]+(?:로|길))\s?(?:\d{1,4}번?[가나다]?길\s?)?\d", s)
    if not m:
        return False
    road = m.group(1)
    return road not in _ROAD_STOP and not road.endswith("으로")


_COARSE_STOP = frozenset(
    "친구 가구 도구 연구 요구 입구 출구 야구 농구 축구 탁구 배구 족구 지구 기구 전구 추구 항구 창구 문구 "
    "욕구 식구 하구 먹구 보구 알구 있구 없구 했구 같구 시구 여시 다시 혹시 역시 당시 동시 수시 항시 임시 "
    "무시 감시 표시 지시 제시 개시 한시 몇시 교시 전시 군 구 시 입시 나시 잠시 소시 오시 가시 하시 보시 "
    "드시 계시 주시 사시 아시 마시 오구 이구 사구 구구 영구 가시 세시 네시 두시 한시 다섯시 여섯시 일곱시 "
    "여덟시 아홉시 열시 열한시 열두시 칠구 구시 장군 해군 육군 공군 아군 적군 대군 국군 남군 여군 신군 "
    "그러구 저러구 이러구 어쩌구 저쩌구".split())
_FINE_STOP = frozenset(
    "이동 운동 행동 활동 감동 자동 충동 노동 출동 변동 작동 공동 소동 난동 동동 파동 진동 부동 가동 발동 "
    "선동 연동 이리 우리 요리 머리 소리 거리 자리 다리 관리 처리 정리 수리 미리 빨리 멀리 유리 무리 "
    "꼬리 모리 보리 오리 의리 원리 논리 진리 심리 승리 거리 짜리 마리 고리 소머리 한가리 "
    "라면 그러면 하면 보면 가면 오면 장면 측면 표면 냉면 정면 반면 전면 화면 당면 내면 외면 대면 "
    "구면 초면 일면 양면 면 동 리 읍 가 형동 남동".split())


def _stop(tok: str, stop: frozenset) -> bool:
    return any(tok[k:] in stop for k in range(len(tok) - 1)) or tok in stop


def _jibun_ok(s: str) -> bool:
    toks = re.findall(r"[가-힣0-9]+", s)
    coarse = [t for t in toks if t[-1] in "시군구도" and not _stop(t, _COARSE_STOP)]
    fine = [t for t in toks if t[-1] in "동읍면리가" and t not in _FINE_STOP]
    return bool(coarse) and bool(fine)


def _fine_num_ok(s: str) -> bool:
    m = re.match(r"[가-힣0-9]+", s)
    return m is not None and m.group(0) not in _FINE_STOP


def _postcode_ok(s: str) -> bool:
    return s[0] in "0123456"      # Korean postcodes run 01000-63644


# Common words that look like surname + 1-2 syllables before 씨/님, or after 저는/나는.
_NAME_STOP = frozenset(
    "선생 사장 부장 교수 하느 하나 부처 임금 회원 고객 기사 원장 사모 목사 신부 수녀 간호사 의사 팀장 "
    "실장 소장 총장 교장 반장 방장 부방장 과장 차장 대리 주임 이사 상무 전무 회장 의원 작가 감독 "
    "선배 후배 형 누 주 손 아버 어머 할머 할아버 언 마음 공주 왕자 도련 따님 아드 서방 사위 "
    "고모 이모 삼촌 조카 기장 부기장 선장 시장 구청장 도지사 판사 검사 변호사 박사 석사 학사 "
    "정말 진짜 이제 오늘 지금 사실 우리 조금 원래 계속 이거 이게 이번 전부 전혀 한번 한국 제일 정도 "
    "안녕 주말 학생 남자 여자 사람 고등 대학 회사 혼자 지금 이미 아직 아까 나중 요즘 이상 이런 그런 "
    "저런 어떤 무슨 제가 내가 너무 많이 조용 심심 배고 피곤 행복 우울 사랑 감사 미안 최고 최악 "
    "부모 조상 스님 장난 아저 로봇 주당 사수 부자 단계 위로 고수 하수 초보 고인 회원 구독자 시청자 여러분  한가 바보 천재 막내 장남 장녀 차남 학교 직장 백수 하루 이틀 오전 오후 저녁 아침 점심 고양 강아".split())


def _person_ok(s: str) -> bool:
    s = s.strip()
    return not (_stop(s, _NAME_STOP) or s[:2] in _NAME_STOP or s[-1] in "날글솜맵")


# --- English ----------------------------------------------------------------------------------

def _ssn_ok(s: str) -> bool:
    """US SSN: area 001-899 but not 666, group 01-99, serial 0001-9999."""
    d = re.sub(r"\D", "", s)
    return len(d) == 9 and d[:3] not in ("000", "666") and d[0] != "9" and d[3:5] != "00" and d[5:] != "0000"


def _iban_ok(s: str) -> bool:
    """ISO 13616: 15-34 characters, and the number (letters as 10..35, the first four moved to the
    end) is 1 mod 97."""
    iban = s.replace(" ", "").upper()
    if not 15 <= len(iban) <= 34:
        return False
    return int("".join(str(int(c, 36)) for c in iban[4:] + iban[:4])) % 97 == 1


def _intl_ok(s: str) -> bool:
    """A number after + or 00: 8 to 15 digits (E.164 allows 15 with the country code)."""
    return 8 <= len(re.sub(r"\D", "", s)) <= 15


class _Found:
    """A match found by a library, in the shape of re.Match (span, group) as _scan_text reads it."""
    __slots__ = ("_span", "_text")

    def __init__(self, start: int, end: int, text: str):
        self._span, self._text = (start, end), text

    def span(self, group: int = 0) -> tuple[int, int]:
        return self._span

    def group(self, group: int = 0) -> str:
        return self._text


class LibraryPhones:
    """Google's libphonenumber (the ``phonenumbers`` package) as a DETECTORS pattern:
    ``finditer(text)`` runs its PhoneNumberMatcher once per region. Leniency STRICT_GROUPING: the
    number must be valid in its numbering plan (a real US area code and exchange, a UK number's
    length) and its digits grouped as that country groups them; VALID alone also took a Korean
    business number (``220-81-62517``) and a count (``1 2 3 ... 10``) for US numbers. A number
    written with ``+`` and its country code is found whatever the region; ``regions`` decides
    which national formats are read (Korean ones are the digit view's)."""

    def __init__(self, regions: tuple[str, ...]):
        import phonenumbers
        self.regions = regions
        self._matcher, self._leniency = phonenumbers.PhoneNumberMatcher, phonenumbers.Leniency.STRICT_GROUPING

    def finditer(self, text: str):
        for region in self.regions:
            for m in self._matcher(text, region, leniency=self._leniency):
                yield _Found(m.start, m.end, m.raw_string)


def _given_names() -> frozenset[str]:
    """US given names (the 1990 census lists shipped in the ``names`` package, 5,163 names), lower case."""
    from names import FILES
    out = set()
    for key in ("first:male", "first:female"):
        with open(FILES[key], encoding="ascii") as f:
            out.update(line.split()[0].lower() for line in f if line.strip())
    return frozenset(out)


_GIVEN = _given_names()
# Listed names that are also ordinary words: they count only when capitalised ("Hi Mark" but not
# "i'm will..."). Picked by hand, starting from the listed names that the English sample corpus
# (data/sample/chitchat-en) uses in lower case mid-sentence.
_GIVEN_WORDS = frozenset(
    "will may june april august hope grace faith rose dawn mark bill art pat sandy ray rich frank ivy lily "
    "daisy crystal amber ruby pearl jade penny holly cherry candy ginger misty stormy brandy chase hunter "
    "miles wade reed dean don jack earl carol sue dale glen cliff hall page summer winter autumn spring "
    "chance joy star drew eve clay son van ward temple forest sun moon kit lane dot bee ping sang hung min "
    "ta un al ed ma ha in my so an see long many else ok soon song brain season marvel hang numbers marry "
    "carry patience charity liberty kitty desire glory bell rod windy manual era genie meta destiny olive "
    "tad soo chia wen jae rico vida celeste maple".split())
# Never a name after "I'm", a greeting or "my name is": how people are, what they are, whom they greet.
_EN_NOT_NAMES = frozenset(
    # function words
    "a an the this that these those it its there here where what when who whom whose why how which if "
    "so as at by for from in into of off on onto out over to up with about after again all also always "
    "and any are back be been being both but can could did do does doing done each either else even ever "
    "every few first going gonna gotta had has have having he her him his i im is just kinda kind sorta "
    "like more most much must my myself never next no nor not now oh once one only or other our own "
    "quite rather really same she should since some still such than then they though too very was we "
    "well were whatever will would yes yet you your yours yall ya yo ye u ur "
    # whom one greets or thanks
    "all everyone everybody anyone guys guy girls gals folks people team friend friends buddy bud dude "
    "dudes bro bros bruh man men mate pal sir madam maam mister miss lady ladies gentlemen boss fam love "
    "babe baby honey dear sweetie darling stranger again mom dad mum mama papa grandma grandpa sis bestie "
    "partner neighbor neighbour bot robot human world god lord jesus "
    # how one is
    "happy sad tired sleepy hungry thirsty bored busy fine good great okay alright sick ill sorry sure "
    "glad new old young single married engaged pregnant ready free late early home alone excited nervous "
    "scared afraid worried confused curious interested jealous lucky stuck lost serious kidding joking "
    "honest cool awesome amazing fantastic terrible awful horrible bad better best worse worst pretty "
    "super totally literally actually probably definitely almost exhausted stressed fun funny weird "
    "crazy lazy normal fat tall short big small rich poor broke famous right wrong "
    # what one is
    "american canadian mexican korean japanese chinese filipino vietnamese thai indian british english "
    "irish scottish welsh french german italian spanish portuguese russian polish dutch swedish norwegian "
    "danish finnish greek turkish brazilian argentinian australian african asian european latino latina "
    "hispanic mormon christian catholic muslim jewish hindu buddhist atheist lds vegan vegetarian gay "
    "straight bi trans male female boy girl woman student teacher nurse doctor engineer freshman "
    "sophomore junior senior major minor member fan half part pre post pro ex originally currently "
    "still trying looking thinking hoping planning working studying learning getting coming leaving "
    "staying feeling living moving "
    # when
    "january february march july september october november december monday tuesday wednesday "
    "thursday friday saturday sunday morning afternoon evening night today tomorrow tonight yesterday "
    "later soon sometime anytime whenever maybe sometimes "
    # what one says
    "wow umm um uh uhh oh ohh ah ahh aww haha hahaha lol lmao omg idk btw tbh imo jk xd yeah yea yep yup "
    "nope nah hmm hm well welp yay ugh adieu byee byeee cya ttyl mr mrs ms mx dr prof".split())
_ADJ_ENDING = re.compile(r"(?:ed|ing|ful|ous|ive|ish|ese|ian|ean|ican|ic|less|able|ible|ly|y|ist|ism)$")


class EnglishNames:
    """Given names after the cues English speakers introduce or address someone with, as a
    DETECTORS pattern (one regex pass; how sure a cue is decides what may follow it):

    * "my name is X", "my name's X", "I'm called X", "they call me X": any X but a known word
      ("my name is not important");
    * "I'm X", "I am X", "call me X", "hi X", "hey, X", "thanks X", "bye X", "nice to meet you X"
      (after a title any X: "Goodbye Mr. Stark"): X a listed given name (capitalised where
      the name is also a word: "Hi Mark", not "I'm miss..."), or a capitalised word that closes
      the phrase ("Hey Jaezo!", "I'm Deandra.") and is neither a known word nor shaped like an
      adjective or a nationality ("I'm Happy", "I'm Korean", "Hey Sorry I ...").

    A capitalised word right after the name goes with it ("I'm Blake Walker"). A cue that ends its
    sentence ("Hello! Wow, ...") is no cue for the next one."""

    # run over the text in lower case (one pattern for "Hi", "hi" and "HI"; offsets are the same)
    _CUE = (r"(?=[imtcghybdwsn])(?:"
            r"(?P<sure>\b(?:my\s+name(?:['’]s|\s+is|s)|the\s+name['’]s|i(?:['’]m|\s+am)\s+called|they\s+call\s+me)"
            r"\s+(?:(?:actually|just|really|also)\s+)?)"
            r"|\b(?:i(?:['’]?m|\s+am)|call\s+me|h(?:i|ey|ello|iya|eya|owdy)|yo|th(?:anks|ank\s+you|x)|bye|goodbye|"
            r"good\s?(?:night|morning)|morning|dear|welcome|congrat(?:s|ulations)|cheers|see\s+y(?:a|ou)|"
            r"nice\s+to\s+meet\s+you|sorry),?\s+(?P<title>(?:mr|mrs|ms|mx|dr|miss|prof)\.?\s+)?)")
    # the name is read in a lookahead, so the next match may start at it ("hey im kyle", "Hi, I'm Ethan")
    _RE = re.compile(_CUE + r"(?=(?P<name>[a-z]+(?:-[a-z]+)?)(?![a-z0-9])(?!['’][a-z]{2})"
                     r"(?P<last>\s+[a-z]+(?:-[a-z]+)?(?![a-z0-9'’]))?"
                     r"(?P<close>\s*(?:[,.!?;:)~]|$)|\s+(?:btw|by\s+the\s+way|here|and|but|from|nice)\b)?)")

    def finditer(self, text: str):
        low = text.lower()
        if len(low) != len(text):      # a character whose lower case is longer (rare): keep offsets
            low = "".join(c if len(c.lower()) != 1 else c.lower() for c in text)
        # most lines hold no cue: one search, and no generator, for them
        return () if self._RE.search(low) is None else self._names(text, low)

    def _names(self, text: str, low: str):
        for m in self._RE.finditer(low):
            w = m.group("name")
            if len(w) < 2 or w in _EN_NOT_NAMES:
                continue
            start, end = m.span("name")
            word = text[start:end]
            capitalised = word[0].isupper()
            a, b = m.span("last")
            surname = a >= 0 and capitalised and _TITLE_CASE.fullmatch(text[a:b].strip()) is not None \
                and m.group("last").strip() not in _EN_NOT_NAMES
            closes = m.group("close") is not None and (a < 0 or surname)
            title = m.group("title") is not None and text[m.start("title")].isupper()
            if not (m.group("sure") is not None or title
                    or (w in _GIVEN and (capitalised or w not in _GIVEN_WORDS))
                    or (closes and not _ADJ_ENDING.search(w) and (_NAME_SHAPE.fullmatch(word) or (
                        word.isupper() and text[m.start():start].isupper())))):      # "HI SAILOR"
                continue
            if surname:
                end = b                 # "Blake Walker": the surname goes with the name
            yield _Found(start, end, text[start:end])


_TITLE_CASE = re.compile(r"[A-Z][a-z]+(?:-[A-Z][a-z]+)?")
_NAME_SHAPE = re.compile(r"[A-Z][a-z]+(?:-[A-Z][a-z]+)?|[A-Z]{2,3}")    # "Jaezo", "Mary-Jo", "BK"; not "SOOOOO"


# ---------------------------------------------------------------------------------------------
# the table

_D = re.compile
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
             _ip_ok, needs=". #", context=_IP_CTX, name="ipv4"),
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
    Detector("[MENTION]", _D(r"(?<![A-Za-z])(?i:kakao ?id|kakaotalk|insta(?:gram)?|telegram|twitter|id)\s*[:=]\s*([A-Za-z][A-Za-z0-9._-]{2,29})(?![A-Za-z0-9])"),
             group=1, needs=":= A", name="handle-en"),
    Detector("[PASSPORT]", _D(r"(?<![A-Za-z0-9])[MSRODG](?:\d{3}[A-Z]\d{4}|\d{8})(?![A-Za-z0-9])"), needs="# A", context=_PASSPORT_CTX, name="passport"),
    Detector("[PLATE]", _D(rf"(?<![\d가-힣])(?:{_SIDO}\s?)?\d{{2,3}}\s?[{_PLATE_LETTERS}]\s?\d{{4}}(?!\d)"), needs="#", context=_PLATE_CTX, name="plate"),
    Detector("[ADDRESS]", _D(rf"(?<![가-힣A-Za-z])(?:{_COARSE}\s*){{0,3}}[가-힣0-9]{{1,12}}(?:로|길)\s?(?:\d{{1,4}}번?[가나다]?길\s?)?\d{{1,4}}(?:-\d{{1,4}})?(?!\d|[.:,]\d){_TAIL}(?!{_UNITS}){_AFTER}"),
             _road_ok, needs="# 로길", context=_ROAD_CTX, name="road"),
    Detector("[ADDRESS]", _D(rf"(?<![가-힣])(?:{_COARSE}\s*){{1,3}}(?:(?:[가-힣]{{1,6}}\d{{0,2}}동|[가-힣]{{1,4}}(?:읍|면|리)|[가-힣]{{1,4}}\d가)\s*){{1,2}}(?<!\s)(?:\s?\d{{1,5}}(?:-\d{{1,4}})?(?:번지)?(?!\d){_TAIL})?(?:(?![가-힣])|(?=에|으로|이|쪽|근처|인데|이야|이에요|입니다|살|사|쯤|부근|주민))"),
             _jibun_ok, needs="동읍면리", context=_JIBUN_CTX, name="jibun"),
    Detector("[ADDRESS]", _D(rf"(?<![가-힣])(?:[가-힣]{{1,8}}\d{{0,2}}(?:동|리)|[가-힣]{{1,4}}\d가)\s?(?:\d{{2,5}}(?:-\d{{1,4}})?|\d{{1,5}}-\d{{1,4}}|\d{{1,5}}번지)(?!\d|[.:,]\d){_TAIL}(?!{_UNITS}){_AFTER}"),
             _fine_num_ok, needs="# 동리", context=_LOT_CTX, name="lot"),
    Detector("[ADDRESS]", _D(rf"(?:[가-힣A-Za-z0-9]{{0,15}}{_APT}\s*)?(?<!\d)\d{{1,4}}\s?동\s?\d{{1,5}}\s?호"), needs="# 호", context=_APT_CTX, name="apartment"),
    Detector("[POSTCODE]", _D(r"(?<![\d-])\d{5}(?![\d-])"), _postcode_ok, cue=_POSTCODE_CUE, near="[ADDRESS]",
             needs="#", name="postcode"),
    Detector("[NAME]", _D(rf"(?<![가-힣])({_SURNAME_RE}[가-힣]{{1,2}}?)(?=\s?(?:씨|님)(?![가-힣]{{0,1}}(?:께서|이|을|의|은|는)?[가-힣]))"),
             _person_ok, group=1, needs="씨님", name="surname-honorific"),
    Detector("[NAME]", _D(rf"(?:이름이\s+|이름은|이름:|성함은|성함:)\s*({_SURNAME_RE}[가-힣]{{1,2}}?)(?=입니다|이에요|예요|이야|야|이고|이라고|라고|임|요|\s|$|[.,!])"),
             _person_ok, group=1, needs="름함", name="name-cue"),
    Detector("[NAME]", _D(rf"(?<![가-힣])(?:저는|나는)\s+({_SURNAME_RE}[가-힣]{{1,2}}?)(?=입니다|이에요|예요|이라고 (?:해|합)|라고 (?:해|합))"),
             _person_ok, group=1, needs="입예라", context=_D("(?:저|나)는\\s"), name="self-intro"),
    # --- English: national numbers, IBAN, phones, street addresses, given names -----------------
    Detector("[RRN]", _D(r"(?<![\d-])\d{3}([- ])\d{2}\1\d{4}(?![\d-])"), _ssn_ok, needs="#", context=_SSN_CTX, name="ssn"),
    Detector("[RRN]", _D(r"(?<!\d)\d{9}(?!\d)"), _ssn_ok, needs="#", cue=_SSN_CUE, context=_D(r"\d{9}"), name="ssn-cued"),
    Detector("[ACCOUNT]", _D(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?:[A-Z0-9]{11,30}|(?: [A-Z0-9]{4})"
                             r"(?: (?=[A-Z]{0,3}\d)[A-Z0-9]{4}){1,6}(?: (?=[A-Z]{0,2}\d)[A-Z0-9]{1,3})?)(?![A-Za-z0-9])"),
             _iban_ok, needs="# A", context=_D(r"[A-Z]{2}\d\d"), name="iban"),
    Detector("[PHONE]", LibraryPhones(PHONE_REGIONS), needs="#", context=_LIB_PHONE_CTX, name="phone-lib"),
    Detector("[PHONE]", _D(r"(?<![\w+.-])(?:\+?1[ .-]?)?(?:\(\d{3}\) ?|\d{3}[ .-])\d{3}[ .-]\d{4}(?![\w-]|\.\d)"),
             needs="#", context=_NANP_CTX, name="phone-nanp"),
    Detector("[PHONE]", _D(r"(?<![\w+])(?:\+|\b00(?=[1-9]))\d{1,3}(?:[ .-]?\(?\d{1,5}\)?){2,5}(?![\w-]|\.\d)"), _intl_ok,
             needs="#", context=_D(r"\+\s?\(?\d|00[1-9]"), name="phone-plus"),
    Detector("[PHONE]", _D(r"(?<![\w.-])\d{3}-\d{4}(?![\w-]|\.\d)"), needs="#", cue=_PHONE_CUE_EN, context=_D(r"\d{3}-\d{4}"), name="phone-local"),
    Detector("[ADDRESS]", _D(rf"(?<![\w-])\d{{1,5}}[A-Za-z]?(?:-\d{{1,4}})?\s+(?:(?:[NSEW]\.?|North|South|East|West)\s+)?"
                             rf"(?:(?:[A-Z][a-z]+|\d{{1,3}}(?:st|nd|rd|th))\s+){{1,3}}(?:{_STREET}|(?i:street|avenue|road|boulevard|lane|drive|parkway))\b"
                             rf"(?:\s+(?:NW|NE|SW|SE)\b)?(?:,?\s*(?:Apt|Apartment|Suite|Ste|Unit|#)\.?\s*#?[A-Za-z0-9-]+)?"),
             needs="# A", context=_STREET_CTX, name="street-en"),
    Detector("[POSTCODE]", _D(rf"(?<![A-Za-z])(?:{'|'.join(_US_STATES)})\s+(\d{{5}}(?:-\d{{4}})?)(?![\d-])"),
             group=1, needs="# A", context=_D(r"[A-Z]{2}\s+\d{5}"), name="zip-us"),
    Detector("[NAME]", EnglishNames(), needs="A", name="name-en"),
    # --- digit view (pattern: digits only, validator: grouped "010-1234-5678") ------------------
    Detector("[PHONE]", _D(r"01[016789]\d{7,8}"), view="digits", name="mobile"),
    Detector("[PHONE]", _D(r"82(?:0?1[016789]\d{7,8}|0?(?:2|[3-6][1-5]|70)\d{7,8})"), view="digits", name="phone-intl"),
    Detector("[RRN]", _D(r"\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])[1-8]\d{6}"), _rrn_ok, view="digits", name="rrn"),
    Detector("[ACCOUNT]", _D(r"\d{10,14}"), _account_ok, view="digits", cue=_ACCOUNT_CUE, name="account"),
    Detector("[CARD]", _D(r"\d{13,19}"), _card_ok, view="digits", name="card"),
    Detector("[PHONE]", _D(r"0(?:2|[3-6][1-5])\d{7,8}|070\d{8}|050\d{8,9}"), _landline_ok, view="digits", name="landline"),
    Detector("[PHONE]", _D(r"0(?:2|[3-6][1-5])\d{7,8}|1[568]\d{6}"), view="digits", cue=_PHONE_CUE, name="phone-cued"),
    Detector("[PHONE]", _D(r"1[568]\d{6}"), _service_ok, view="digits", name="service"),
    Detector("[BIZNO]", _D(r"\d{10}"), _bizno_ok, view="digits", name="bizno"),
    Detector("[LICENSE]", _D(r"\d{12}"), _license_ok, view="digits", name="license"),
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
    ``{"박영우 소마", "박영우", "영우", "소마"}``. Numbers, 1-syllable parts, region names and generic
    words ("you", "회원님", "방장", "알 수 없음") are dropped."""
    out: set[str] = set()
    raw = unicodedata.normalize("NFKC", display_name or "").strip()
    if not raw:
        return out
    parts = [p for p in re.split(r"[\s/|_\-·.,()\[\]{}<>@#~!?:;*+=♡♥☆★]+", raw) if p]

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

    keep_raw = len(parts) > 1 and raw.lower() not in _GENERIC_NAMES
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
