"""Validators of the personal-data detectors (preprocess.anonymize.DETECTORS): whether a matched
number or address is well formed (checksums, dates, digit-group layouts) and not one of the
look-alikes listed in the stop lists. Each takes the matched text and returns True to keep it."""
from __future__ import annotations

import re

__all__ = ["luhn_ok", "date_ok", "account_ok", "bizno_ok", "card_ok", "fine_num_ok", "iban_ok", "intl_ok", "ip_ok",
           "jibun_ok", "landline_ok", "license_ok", "person_ok", "postcode_ok", "road_ok", "rrn_ok", "service_ok",
           "ssn_ok"]


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


def rrn_ok(g: str) -> bool:
    sizes = _groups(g)
    return (len(sizes) == 1 or max(sizes) == 1 or (sizes[0] == 6 and min(sizes) >= 2)) and date_ok(_digits(g)[:6])


def card_ok(g: str) -> bool:
    sizes = _groups(g)
    return (len(sizes) == 1 or min(sizes) >= 3 or max(sizes) == 1) and luhn_ok(_digits(g))


def account_ok(g: str) -> bool:
    return _layout_ok(g) and len(set(_digits(g))) > 2


def landline_ok(g: str) -> bool:
    sizes = _groups(g)
    return len(sizes) == 1 or (len(sizes) == 3 and sizes[0] in (2, 3) and sizes[1] in (3, 4)
                               and sizes[2] == 4) or _digits(g)[:3] in ("070", "050")


def service_ok(g: str) -> bool:
    return _groups(g) == (4, 4)


def bizno_ok(g: str) -> bool:
    return _groups(g) == (3, 2, 5)


def license_ok(g: str) -> bool:
    return _groups(g) == (2, 2, 6, 2) and 11 <= int(g[:2]) <= 28


def ip_ok(s: str) -> bool:
    parts = s.split(".")
    return any(len(p) > 1 for p in parts)     # "1.2.3.4" is a version, "10.0.0.1" an address


_ROAD_STOP = frozenset(
    "바로 새로 서로 따로 진짜로 정말로 실제로 별로 주로 절대로 그대로 이대로 저대로 요대로 마음대로 맘대로 대로 "
    "함부로 억지로 스스로 도로 일부러 혼자로 거꾸로 멋대로 제멋대로 차로 택시로 버스로 기차로 카드로 현금로 "
    "출근길 퇴근길 등굣길 하굣길 등교길 하교길 산책길 귀갓길 귀가길 지름길 오솔길 눈길 발길 손길 빗길 밤길 뱃길 "
    "가는길 오는길 이길 그길 저길 길 꽃길 흙길 돌길 먼길 갈길 집길 시골길 고갯길 내리막길 오르막길".split())


def road_ok(s: str) -> bool:
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


def jibun_ok(s: str) -> bool:
    toks = re.findall(r"[가-힣0-9]+", s)
    coarse = [t for t in toks if t[-1] in "시군구도" and not _stop(t, _COARSE_STOP)]
    fine = [t for t in toks if t[-1] in "동읍면리가" and t not in _FINE_STOP]
    return bool(coarse) and bool(fine)


def fine_num_ok(s: str) -> bool:
    m = re.match(r"[가-힣0-9]+", s)
    return m is not None and m.group(0) not in _FINE_STOP


def postcode_ok(s: str) -> bool:
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


def person_ok(s: str) -> bool:
    s = s.strip()
    return not (_stop(s, _NAME_STOP) or s[:2] in _NAME_STOP or s[-1] in "날글솜맵")


# What follows "이름은/이름이/닉네임은/별명은/성함은" where a name would stand and is not a name: the questions
# ("이름이 뭐야?"), what one says of a name ("이름은 비밀이야", "본명이야", "영어야"), pointers.
_SAID_NAME_STOP = frozenset(
    "뭐 뭔 뭘 머 모 무엇 무어 누구 어디 언제 몇 무슨 어떤 어떻게 왜 비밀 아직 가명 본명 예명 실명 별명 "
    "닉네임 이름 영어 한글 한국어 한자 외자 진짜 가짜 똑같 같은 특이 이거 그거 저거 이게 그게 저게 이것 "
    "그것 저것 여기 거기 저기 그 이 저 다 모름 몰라 뭐였 뭐더 기억 생각 예쁘 이쁘 예뻐 이뻐 가물 아니 안 못 더 좀 "
    "너무 정말 what secret same".split())


def said_name_ok(s: str) -> bool:
    """A name said after 이름은/닉네임은/... (one or two words), unless a question word or a word
    about the name."""
    return all(w not in _SAID_NAME_STOP for w in s.lower().split())


def cue_name_ok(s: str) -> bool:
    """Surname + 1-2 syllables after 이름은/성함은 (maybe ending the phrase): a name shape that is
    neither a word about names ("이름이 기억 안 나", "이름은 가명이야") nor a predicate ("예쁘다")."""
    s = s.strip()
    return person_ok(s) and said_name_ok(s) and s[-1] != "다"


# --- English ----------------------------------------------------------------------------------

def ssn_ok(s: str) -> bool:
    """US SSN: area 001-899 but not 666, group 01-99, serial 0001-9999."""
    d = re.sub(r"\D", "", s)
    return len(d) == 9 and d[:3] not in ("000", "666") and d[0] != "9" and d[3:5] != "00" and d[5:] != "0000"


def iban_ok(s: str) -> bool:
    """ISO 13616: 15-34 characters, and the number (letters as 10..35, the first four moved to the
    end) is 1 mod 97."""
    iban = s.replace(" ", "").upper()
    if not 15 <= len(iban) <= 34:
        return False
    return int("".join(str(int(c, 36)) for c in iban[4:] + iban[:4])) % 97 == 1


def intl_ok(s: str) -> bool:
    """A number after + or 00: 8 to 15 digits (E.164 allows 15 with the country code)."""
    return 8 <= len(re.sub(r"\D", "", s)) <= 15
