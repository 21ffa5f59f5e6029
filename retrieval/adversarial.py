"""Adversarial 2-candidate sets from a shards folder's TEST split: the true reply against a
wrong one that shares its words but not its meaning.

    build_adversarial(shards, out) -> {kind: count}; writes out/copy.jsonl, negation.jsonl, tense.jsonl

Three kinds, each its own file in the fixed-candidate JSONL format (retrieval.fixed):

* ``copy``     the wrong candidate is a copy of the last context turn: a system that rewards word
               overlap with the context picks it;
* ``negation`` the wrong candidate is the true reply negated (Korean: 안 / 못 / -지 않 inserted
               or removed, 있 <-> 없; English: do/does/did not, is/are/was not, can't ...);
* ``tense``    the wrong candidate is the true reply in another tense (Korean: past <-> present,
               future -> past, e.g. 했어 <-> 해, 할 거야 -> 했어; English: am/is/are <-> was/were,
               do/does <-> did, common verbs' present <-> past).

For ``negation`` and ``tense`` the wrong candidate is about the same thing as the true one, in
nearly the same words: a system that only matches topics scores about 0.5 there (chance), and
only one that reads what the reply says about the context scores higher. A rewrite is a rule
from a small pattern table applied to one predicate (the last one in Korean, the first in
English); a reply no rule matches gives no case, so every emitted case really differs. The
rewrites are meant to stay grammatical, not to be exhaustive: irregular forms are left alone.
Which candidate comes first is drawn with ``random.Random(seed)``; ``max_cases`` keeps a seeded
uniform sample of each kind; the same input gives the same files.
About 400 lines because most of it is the two languages' rewrite rules (Hangul syllable
arithmetic, Korean predicate endings, English auxiliaries), each a few lines, read as one table.
"""
from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Callable, Iterable, Sequence

KINDS = ("copy", "negation", "tense")
SEED = 0

# ---- Hangul syllables ------------------------------------------------------------------------
# a syllable is (initial, vowel, final) indices: code = 0xAC00 + (initial * 21 + vowel) * 28 + final
A, AE, EO, YEO, O, WA, WAE, OE, U, WO, EU, I = 0, 1, 4, 6, 8, 9, 10, 11, 13, 14, 18, 20  # vowels
NO_FINAL, RIEUL, BIEUP, SSANG_SIOT = 0, 8, 17, 20                                         # finals
IEUNG = 11                                                                                # initial ㅇ
INFINITIVE_VOWELS = {A, AE, EO, YEO, WA, WO, WAE}  # the vowel of a verb's 아/어 form (해, 가, 먹어, 와, 줘, 돼)


def is_syllable(ch: str) -> bool:
    return "\uac00" <= ch <= "\ud7a3"


def split_syllable(ch: str) -> tuple[int, int, int]:
    code = ord(ch) - 0xAC00
    return code // 588, (code % 588) // 28, code % 28


def join_syllable(initial: int, vowel: int, final: int) -> str:
    return chr(0xAC00 + (initial * 21 + vowel) * 28 + final)


def with_final(ch: str, final: int) -> str:
    i, v, _ = split_syllable(ch)
    return join_syllable(i, v, final)


def has_hangul(text: str) -> bool:
    return any(is_syllable(c) for c in text)


# ---- Korean verb forms -----------------------------------------------------------------------
B_IRREGULAR = {"춥", "덥", "어렵", "쉽", "귀엽", "무섭", "반갑", "고맙", "아름답", "가깝", "즐겁", "맵", "무겁", "가볍"}
RIEUL_STEMS = {"살", "놀", "알", "열", "울", "팔", "만들", "들", "걸", "길", "멀", "힘들"}  # 살 거야: 사다 or 살다?
NOT_VERBS = {"오빠", "아빠", "노래", "미래", "원래", "그때", "이때", "때", "벌써", "영어", "단어", "언어", "국어", "한국어", "중국어", "일본어", "외국어", "연어", "상어", "문어",
             "고등어", "오징어", "숭어", "붕어", "잉어", "주어", "목적어", "억", "아", "어", "자", "저", "나", "너"}
CONTRACTED = set("해돼봐줘워셔려쳐켜써래때빠파퍼뻐와")  # 아/어 forms that end a verb, never a particle
POLITE_ONLY = set("가서")                             # also particles: a verb form only before 요


def infinitive(stem: str) -> str:
    """The 아/어 form of a verb stem (하 -> 해, 가 -> 가, 먹 -> 먹어, 오 -> 와, 마시 -> 마셔,
    되 -> 돼, 쓰 -> 써, 춥 -> 추워); 르- and other irregular stems are not handled."""
    if stem.endswith("하"):
        return stem[:-1] + "해"
    if stem in B_IRREGULAR or (len(stem) > 1 and stem[-2:] in B_IRREGULAR):
        i, v, _ = split_syllable(stem[-1])
        return stem[:-1] + join_syllable(i, v, NO_FINAL) + "워"
    i, v, f = split_syllable(stem[-1])
    bright = v in (A, O)
    if f != NO_FINAL:
        return stem + ("아" if bright else "어")
    if v in (A, AE, EO, 5, YEO):  # 가, 보내, 서, 세, 켜: the ending merges away
        return stem
    merged = {O: WA, U: WO, I: YEO, OE: WAE}.get(v)
    if merged is not None:
        return stem[:-1] + join_syllable(i, merged, NO_FINAL)
    if v == EU:  # 쓰 -> 써, 바쁘 -> 바빠 (the vowel of the syllable before decides)
        before = split_syllable(stem[-2])[1] if len(stem) > 1 and is_syllable(stem[-2]) else EO
        return stem[:-1] + join_syllable(i, A if before in (A, O) else EO, NO_FINAL)
    return stem + "어"


def past_stem(stem: str) -> str:
    """The past form before its ending: 하 -> 했, 먹 -> 먹었, 가 -> 갔 (add "어" for 했어)."""
    inf = infinitive(stem)
    return inf[:-1] + with_final(inf[-1], SSANG_SIOT)


def _core(body: str) -> tuple[str, str]:
    """(the predicate without a polite 요, "요" or "")."""
    return (body[:-1], "요") if len(body) >= 2 and body.endswith("요") else (body, "")


def is_past_form(core: str) -> bool:
    """했어, 먹었어, 갔어, 됐어: a syllable with final ㅆ and an infinitive vowel, then 어."""
    if len(core) < 2 or core[-1] != "어" or not is_syllable(core[-2]):
        return False
    _, v, f = split_syllable(core[-2])
    return f == SSANG_SIOT and v in INFINITIVE_VOWELS


def is_present_form(core: str, polite: bool) -> bool:
    """좋아, 먹어, 있어, 해, 봐, 고마워, 가(요): an 아/어 form that ends a verb (not 진짜, 영어, 친구가)."""
    if not core or not is_syllable(core[-1]) or core in NOT_VERBS:
        return False
    last = core[-1]
    i, v, f = split_syllable(last)
    if f != NO_FINAL or v not in INFINITIVE_VOWELS:
        return False
    if last in CONTRACTED or (polite and last in POLITE_ONLY):
        return True
    after_final = len(core) >= 2 and is_syllable(core[-2]) and split_syllable(core[-2])[2] != NO_FINAL
    return last in ("아", "어") and after_final


def _last_predicate(tokens: Sequence[str]) -> int | None:
    """Index of the last token holding a Hangul syllable (the sentence's final predicate)."""
    for j in range(len(tokens) - 1, -1, -1):
        if has_hangul(tokens[j]):
            return j
    return None


def _split_tail(token: str) -> tuple[str, str]:
    """(the token up to its last Hangul syllable, what follows: punctuation, ㅋㅋ, emoji)."""
    end = max(k for k, c in enumerate(token) if is_syllable(c)) + 1
    return token[:end], token[end:]


def _rewrite_last(text: str, rule: Callable[[list[str], int, str], str | None]) -> str | None:
    """Apply ``rule(tokens, j, body)`` to the final predicate token j (body: its Hangul part);
    the rule returns the new body (it may edit other tokens in place) or None."""
    tokens = text.split(" ")
    j = _last_predicate(tokens)
    if j is None:
        return None
    body, tail = _split_tail(tokens[j])
    new = rule(tokens, j, body)
    if new is None:
        return None
    tokens[j] = new + tail
    out = " ".join(t for t in tokens if t != "")
    return out if out != text else None


FUTURE_ENDINGS = {"거야": "어", "거예요": "어요", "거에요": "어요", "거지": "지", "겁니다": "습니다"}


def _future_to_past(tokens: list[str], j: int, body: str) -> str | None:
    """할 거야 -> 했어, 먹을 거예요 -> 먹었어요, 갈 거야? -> 갔어?"""
    if body not in FUTURE_ENDINGS or j == 0 or not tokens[j - 1] or not is_syllable(tokens[j - 1][-1]):
        return None
    verb = tokens[j - 1]
    if verb[-1] == "을":
        stem = verb[:-1]
    elif split_syllable(verb[-1])[2] == RIEUL:
        stem = verb[:-1] + with_final(verb[-1], NO_FINAL)
    else:
        return None
    if not stem or verb in RIEUL_STEMS or any(verb.endswith(s) for s in RIEUL_STEMS if len(s) > 1):
        return None
    tokens[j - 1] = ""
    return past_stem(stem) + FUTURE_ENDINGS[body]


def _korean_tense(tokens: list[str], j: int, body: str) -> str | None:
    """The final predicate's tense shifted: future -> past, past -> present, present -> past."""
    future = _future_to_past(tokens, j, body)
    if future is not None:
        return future
    if body.endswith("했습니다"):
        return body[:-4] + "합니다"
    if body.endswith("합니다"):
        return body[:-3] + "했습니다"
    core, yo = _core(body)
    if is_past_form(core):  # 했어 -> 해, 먹었어요 -> 먹어요
        return core[:-2] + with_final(core[-2], NO_FINAL) + yo
    if is_present_form(core, bool(yo)):  # 해 -> 했어, 좋아요 -> 좋았어요
        return core[:-1] + with_final(core[-1], SSANG_SIOT) + "어" + yo
    return None


def korean_tense(text: str) -> str | None:
    return _rewrite_last(text, _korean_tense)


NOT_ENDINGS = {"아": ("", ""), "아요": ("", "요"), "았어": ("past", "어"), "았어요": ("past", "어요")}


def _drop_ji_anh(tokens: list[str], j: int, body: str) -> str | None:
    """좋지 않아요 -> 좋아요, 가지 않았어 -> 갔어."""
    if not body.startswith("않") or j == 0 or not tokens[j - 1].endswith("지") or len(tokens[j - 1]) < 2:
        return None
    form = NOT_ENDINGS.get(body[1:])
    if form is None:
        return None
    stem = tokens[j - 1][:-1]
    tokens[j - 1] = ""
    return (past_stem(stem) if form[0] == "past" else infinitive(stem)) + form[1]


def _drop_an(tokens: list[str], j: int, body: str) -> str | None:
    """안 좋아요 -> 좋아요, 못 가 -> 가, 안돼 -> 돼."""
    if j > 0 and tokens[j - 1] in ("안", "못"):
        tokens[j - 1] = ""
        return body
    if body.startswith("안") and len(body) > 1 and body[1] in "돼되됐":
        return body[1:]
    return None


def _swap_exist(tokens: list[str], j: int, body: str) -> str | None:
    """있어 <-> 없어, 재미있어요 <-> 재미없어요 (the last 있 or 없 of the predicate)."""
    k = max(body.rfind("있"), body.rfind("없"))
    if k < 0 or (k > 0 and body[k - 1] in "아어워와여해고"):  # 앉아 있어: an auxiliary, not existence
        return None
    return body[:k] + ("없" if body[k] == "있" else "있") + body[k + 1:]


HA_ADJECTIVES = {"미안", "피곤", "행복", "심심", "따뜻", "깨끗", "조용", "편안", "불편", "건강", "유명", "중요",
                 "필요", "똑똑", "친절", "궁금", "답답", "시원", "간단", "복잡", "대단", "충분", "이상", "가능",
                 "불가능", "확실", "솔직", "소중", "우울", "속상", "다행", "당연", "비슷", "착", "편", "급"}


def _insert_an(tokens: list[str], j: int, body: str) -> str | None:
    """좋아요 -> 안 좋아요, 했어 -> 안 했어, 공부해 -> 공부 안 해, 할 거야 -> 안 할 거야
    (a noun + 하다 verb takes 안 before 하; a 하다 adjective such as 미안해 before the word)."""
    if body in FUTURE_ENDINGS and j > 0 and tokens[j - 1] and split_syllable(tokens[j - 1][-1])[2] == RIEUL:
        tokens[j - 1] = "안 " + tokens[j - 1]
        return body
    core, yo = _core(body)
    if not (is_past_form(core) or is_present_form(core, bool(yo)) or body.endswith(("합니다", "했습니다"))):
        return None
    if (j > 0 and tokens[j - 1] in ("안", "못")) or body.startswith(("뭐", "감사", "죄송", "싶")):
        return None
    k = max(body.rfind("해"), body.rfind("했"), body.rfind("합"))
    noun = body[:k]
    if k >= 2 and noun not in HA_ADJECTIVES and noun[-1] not in "아어워":  # 공부해, 운동했어 (not 좋아해)
        return f"{noun} 안 {body[k:]}"
    return "안 " + body


KOREAN_NEGATION = (_drop_an, _drop_ji_anh, _swap_exist, _insert_an)


def korean_negation(text: str) -> str | None:
    for rule in KOREAN_NEGATION:
        out = _rewrite_last(text, rule)
        if out is not None:
            return out
    return None


# ---- English ---------------------------------------------------------------------------------
# base, third person, past
VERBS = [("like", "likes", "liked"), ("love", "loves", "loved"), ("go", "goes", "went"), ("have", "has", "had"),
         ("want", "wants", "wanted"), ("get", "gets", "got"), ("think", "thinks", "thought"),
         ("know", "knows", "knew"), ("see", "sees", "saw"), ("make", "makes", "made"), ("eat", "eats", "ate"),
         ("play", "plays", "played"), ("work", "works", "worked"), ("live", "lives", "lived"),
         ("need", "needs", "needed"), ("feel", "feels", "felt"), ("say", "says", "said"),
         ("watch", "watches", "watched"), ("enjoy", "enjoys", "enjoyed"), ("come", "comes", "came"),
         ("take", "takes", "took"), ("buy", "buys", "bought"), ("hate", "hates", "hated"),
         ("study", "studies", "studied"), ("drink", "drinks", "drank"), ("run", "runs", "ran"),
         ("travel", "travels", "traveled"), ("cook", "cooks", "cooked"), ("visit", "visits", "visited"),
         ("listen", "listens", "listened"), ("prefer", "prefers", "preferred"), ("remember", "remembers", "remembered")]
BASE = {form: v[0] for v in VERBS for form in v}
THIRD = {v[0]: v[1] for v in VERBS}
PAST = {v[0]: v[2] for v in VERBS}
PRESENT_FORMS = {f for v in VERBS for f in v[:2]}
PAST_FORMS = {v[2] for v in VERBS}
SINGULAR = {"he", "she", "it", "that", "this", "there"}
PLURAL_SUBJECTS = r"i|you|we|they"
SUBJECTS = r"i|you|we|they|he|she|it"

NEGATED = {"don't": "do", "doesn't": "does", "didn't": "did", "isn't": "is", "aren't": "are", "wasn't": "was",
           "weren't": "were", "can't": "can", "cannot": "can", "couldn't": "could", "won't": "will",
           "wouldn't": "would", "shouldn't": "should", "haven't": "have", "hasn't": "has", "hadn't": "had"}
CONTRACT = {base: neg for neg, base in NEGATED.items() if neg != "cannot"}
AUX = r"am|is|are|was|were|can|could|will|would|should"
CONTRACTED_BE = r"i'm|you're|we're|they're|it's|that's|he's|she's|there's"

TENSE_AUX = {"am": "was", "is": "was", "are": "were", "was": "is", "were": "are", "do": "did", "does": "did",
             "can": "could", "don't": "didn't", "doesn't": "didn't", "isn't": "wasn't", "aren't": "weren't",
             "wasn't": "isn't", "weren't": "aren't", "can't": "couldn't", "i'm": "i was", "you're": "you were",
             "we're": "we were", "they're": "they were", "it's": "it was", "that's": "that was",
             "he's": "he was", "she's": "she was", "there's": "there was"}


def _cased(new: str, old: str) -> str:
    """``new`` capitalised like ``old`` (its first letter), keeping "I" upper-case."""
    if old[:1].isupper():
        new = new[:1].upper() + new[1:]
    return re.sub(r"\bi\b", "I", new)


def _first(text: str, candidates: Iterable[tuple[re.Match | None, Callable[[re.Match], str]]]) -> str | None:
    """Apply the replacement of the earliest match (``(match, make_replacement)`` pairs)."""
    found = [(m, make) for m, make in candidates if m is not None]
    if not found:
        return None
    m, make = min(found, key=lambda p: p[0].start())
    out = text[:m.start()] + _cased(make(m), m.group(0)) + text[m.end():]
    return out if out != text else None


def _verb_after_subject(text: str, forms: set[str]) -> re.Match | None:
    words = "|".join(sorted(forms, key=len, reverse=True))
    return re.search(rf"\b({SUBJECTS})\s+({words})\b", text, re.IGNORECASE)


def english_negation(text: str) -> str | None:
    """I don't like it -> I do like it; I am happy -> I am not happy; I like it -> I don't like it;
    she went -> she didn't go (the first auxiliary, contraction or subject + common verb)."""
    neg = re.search(r"\b(" + "|".join(re.escape(k) for k in NEGATED) + r")\b", text, re.IGNORECASE)
    if neg:
        return _first(text, [(neg, lambda m: NEGATED[m.group(0).lower()])])
    neg = re.search(rf"\b({AUX}) not\b", text, re.IGNORECASE)
    if neg:
        return _first(text, [(neg, lambda m: m.group(1))])

    def do_not(m):
        subject, verb = m.group(1), m.group(2).lower()
        if verb in PAST_FORMS:
            return f"{subject} didn't {BASE[verb]}"
        return f"{subject} {'doesn' if subject.lower() in SINGULAR else 'don'}'t {BASE[verb]}"
    question = rf"\b({AUX}|do|does|did)\b(?=\s+(?:{SUBJECTS})\b)"  # Are you / Do you: contracted
    return _first(text, [
        (re.search(question, text, re.IGNORECASE), lambda m: CONTRACT.get(m.group(0).lower(), m.group(0) + " not")),
        (re.search(rf"\b({AUX}|{CONTRACTED_BE})\b", text, re.IGNORECASE), lambda m: m.group(0) + " not"),
        (_verb_after_subject(text, PRESENT_FORMS | PAST_FORMS), do_not)])


def english_tense(text: str) -> str | None:
    """I am tired -> I was tired; did you -> do you; I like it -> I liked it; she went -> she goes
    (the first auxiliary, contraction or subject + common verb)."""
    def aux(m):
        word = m.group(0).lower()
        before = text[:m.start()].split()[-1:]  # was -> am after I, did -> does after he/she/it
        subject = before[0].lower() if before else ""
        if word == "was" and subject == "i":
            return "am"
        if word == "did":
            return "does" if subject in SINGULAR else "do"
        if word == "didn't":
            return "doesn't" if subject in SINGULAR else "don't"
        return TENSE_AUX[word]

    def verb(m):
        subject, v = m.group(1), m.group(2).lower()
        if v in PAST_FORMS:
            return f"{subject} {THIRD[BASE[v]] if subject.lower() in SINGULAR else BASE[v]}"
        return f"{subject} {PAST[BASE[v]]}"
    words = "|".join(re.escape(k) for k in sorted([*TENSE_AUX, "did", "didn't"], key=len, reverse=True))
    return _first(text, [
        (re.search(rf"(?<![\w'])({words})(?![\w'])", text, re.IGNORECASE), aux),
        (_verb_after_subject(text, PRESENT_FORMS | PAST_FORMS), verb)])


# ---- the sets --------------------------------------------------------------------------------

def negate(text: str) -> str | None:
    """The reply negated, or None when no rule applies (Korean when it holds Hangul)."""
    return korean_negation(text) if has_hangul(text) else english_negation(text)


def shift_tense(text: str) -> str | None:
    """The reply in another tense, or None when no rule applies."""
    return korean_tense(text) if has_hangul(text) else english_tense(text)


def copy_turn(context: Sequence[tuple[str, str]], reply: str) -> str | None:
    """The last context turn, as a wrong reply (None when it is the reply itself or empty)."""
    last = context[-1][1].strip() if context else ""
    return last if last and last != reply.strip() else None


def adversarial_case(example, kind: str, rng: random.Random) -> dict | None:
    """One JSONL case (retrieval.fixed) of ``kind`` for a protocol example, or None when the
    rewrite does not apply; the true reply's position is drawn from ``rng``."""
    reply = example.response
    wrong = {"copy": lambda: copy_turn(example.context, reply), "negation": lambda: negate(reply),
             "tense": lambda: shift_tense(reply)}[kind]()
    if wrong is None or wrong.strip() == reply.strip():
        return None
    label = rng.randrange(2)
    candidates = [reply, wrong] if label == 0 else [wrong, reply]
    return {"id": f"{example.conv_id}:{example.turn}", "kind": kind, "source": example.source,
            "context": [t for _, t in example.context], "candidates": candidates, "label": label}


def build_adversarial(shards: str | Path, out: str | Path, sources: Sequence[str] | None = None,
                      max_cases: int | None = None, seed: int = SEED) -> dict[str, int]:
    """Write ``out/<kind>.jsonl`` for each kind from the test split of ``shards`` (only
    ``sources`` when given; at most ``max_cases`` per kind, a seeded uniform sample) and
    ``out/adversarial.json`` (counts, seed); return {kind: cases written}."""
    from retrieval.examples import load_examples, uniform_sample
    examples = load_examples(shards, "test", sources=sources)
    if not examples:
        raise ValueError(f"{shards}: no test examples{' of ' + ', '.join(sources) if sources else ''}: "
                         f"is the test split empty? (see `dialogbert preprocess`)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    counts, applied = {}, {}
    for kind in KINDS:
        rng = random.Random(f"{seed}:{kind}")
        cases = [c for c in (adversarial_case(e, kind, rng) for e in examples) if c is not None]
        applied[kind] = len(cases)
        cases = uniform_sample(cases, max_cases, seed)
        with open(out / f"{kind}.jsonl", "w", encoding="utf-8") as f:
            for c in cases:
                f.write(json.dumps(c, ensure_ascii=False) + "\n")
        counts[kind] = len(cases)
    summary = {"shards": str(shards), "sources": list(sources) if sources else None, "seed": seed,
               "test_examples": len(examples), "applied": applied, "written": counts, "max_cases": max_cases,
               "note": "label = index of the real reply; the other candidate is the rewrite. On negation and "
                       "tense a system that only matches topics scores about 0.5."}
    (out / "adversarial.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", "utf-8")
    return counts
