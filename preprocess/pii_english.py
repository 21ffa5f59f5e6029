"""English personal data that patterns alone find badly, as DETECTORS patterns
(preprocess.anonymize): phone numbers through Google's libphonenumber (:class:`LibraryPhones`)
and given names next to an introduction or an address (:class:`EnglishNames`) or where someone else
is spoken of (:class:`EnglishMentions`), from the US census name lists. Each has ``finditer(text)``
yielding re.Match-shaped spans."""
from __future__ import annotations

import re

__all__ = ["LibraryPhones", "EnglishNames", "EnglishMentions"]


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


def _lower(text: str) -> str:
    """``text`` in lower case with the same offsets (a character whose lower case is longer, rare,
    is kept as it is), so a match found in it is a span of ``text``."""
    low = text.lower()
    return low if len(low) == len(text) else "".join(c if len(c.lower()) != 1 else c.lower() for c in text)


class EnglishNames:
    """Given names after the cues English speakers introduce or address someone with, as a
    DETECTORS pattern (one regex pass; how sure a cue is decides what may follow it):

    * "my name is X", "my name's X", "my nickname is X", "I'm called X", "they call me X": any X
      but a known word
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
            r"(?P<sure>\b(?:my\s+(?:name(?:['’]s|\s+is|s)|nick(?:\s?name)?(?:['’]s|\s+is))|the\s+name['’]s|i(?:['’]m|\s+am)\s+called|they\s+call\s+me)"
            r"\s+(?:(?:actually|just|really|also)\s+)?)"
            r"|\b(?:i(?:['’]?m|\s+am)|call\s+me|h(?:i|ey|ello|iya|eya|owdy)|yo|th(?:anks|ank\s+you|x)|bye|goodbye|"
            r"good\s?(?:night|morning)|morning|dear|welcome|congrat(?:s|ulations)|cheers|see\s+y(?:a|ou)|"
            r"nice\s+to\s+meet\s+you|sorry),?\s+(?P<title>(?:mr|mrs|ms|mx|dr|miss|prof)\.?\s+)?)")
    # the name is read in a lookahead, so the next match may start at it ("hey im kyle", "Hi, I'm Ethan")
    _RE = re.compile(_CUE + r"(?=(?P<name>[a-z]+(?:-[a-z]+)?)(?![a-z0-9])(?!['’][a-z]{2})"
                     r"(?P<last>\s+[a-z]+(?:-[a-z]+)?(?![a-z0-9'’]))?"
                     r"(?P<close>\s*(?:[,.!?;:)~]|$)|\s+(?:btw|by\s+the\s+way|here|and|but|from|nice)\b)?)")

    def finditer(self, text: str):
        low = _lower(text)
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


# what a title is followed by that is no person's name: "Hi Dr. Who", "Mr. Right", "Dr Pepper"
_TITLE_NOT_NAMES = frozenset("who right wrong strange bean pepper potato clean freeze robot nobody nice big know t".split())
_KIN = ("friend|bestie|bff|buddy|pal|brother|bro|sister|sis|wife|husband|hubby|boyfriend|girlfriend|bf|gf|son|"
        "daughter|cousin|uncle|aunt|auntie|nephew|niece|grandson|granddaughter|grandma|grandpa|grandmother|"
        "grandfather|roommate|neighbou?r|co-?worker|colleague|boss|classmate|teacher|coach|partner|fianc[eé]e?|"
        "ex|mom|dad|mum|mother|father|step(?:mom|dad|mother|father|son|daughter)|kid|baby|dog|cat|puppy|kitten")


class EnglishMentions:
    """Someone else's name, where English speaks of a person rather than to one (a DETECTORS
    pattern beside :class:`EnglishNames`):

    * a title anywhere, capitalised, before a capitalised word ("Ms. Johnson said hi", "Dr Patel");
      not a character ("Dr. Who", "Mr. Right");
    * "his/her/their/your name is X", "her nickname's X": any X but a known word ("Her name is
      Sister Loar": the word after such a title);
    * "this is X", "a dog named X", "my friend X", "our son X" (family, friends, colleagues, pets):
      X a listed given name, capitalised ("my friend Tom", not "this is Korea" or "my friend said").

    Up to two capitalised words after the name on the same line go with it ("Mr. John Smith",
    "Nick Van Alfen")."""

    _RE = re.compile(
        r"(?=[mdpthyino])(?:(?P<title>\b(?:mr|mrs|ms|mx|dr|prof)\.?\s+)"      # the lookahead: re's fast scan
        r"|(?P<said>\b(?:his|her|their|your|its)\s+(?:nick\s?)?name(?:['’]s|\s+is|\s+was)\s+)"
        r"|(?P<weak>\b(?:this\s+is|named|(?:my|our|his|her|their)\s+(?:(?:best|little|big|older|younger|baby|"
        r"twin|old|new)\s+)?(?:" + _KIN + r")),?\s+))"
        r"(?=(?P<name>[a-z]+(?:-[a-z]+)?)(?![a-z0-9])(?!['’][a-z]{2}))")

    def finditer(self, text: str):
        low = _lower(text)
        return () if self._RE.search(low) is None else self._names(text, low)

    def _names(self, text: str, low: str):
        for m in self._RE.finditer(low):
            start, end = m.span("name")
            w, word = m.group("name"), text[start:end]
            if m.group("said") is not None and w in _BEFORE_NAMES:      # "her name is Sister Loar"
                nxt = _NEXT_WORD.match(text, end)
                if nxt is None:
                    continue
                start, end = nxt.span(1)
                w, word = low[start:end], text[start:end]
            if len(w) < 2 or w in _EN_NOT_NAMES:
                continue
            if m.group("title") is not None:
                ok = text[m.start("title")].isupper() and _TITLE_CASE.fullmatch(word) is not None \
                    and w not in _TITLE_NOT_NAMES
            elif m.group("said") is not None:
                ok = not _ADJ_ENDING.search(w) and w not in _SAID_NOT_NAMES
            else:                       # not "this is May 5th"
                ok = w in _GIVEN and word[0].isupper() and _DIGIT_NEXT.match(text, end) is None
            if ok:
                end = _surname_end(text, end)
                yield _Found(start, end, text[start:end])


# what a name is said to be that is no name ("his name is long", "her name is unique")
_SAID_NOT_NAMES = frozenset("long short hard easy unique cute nice common rare simple unknown secret different "
                            "similar same cool lame bad good pretty".split())
_DIGIT_NEXT = re.compile(r"\s*\d")
_NEXT_WORD = re.compile(r"[ \t]+([A-Za-z]+(?:-[A-Za-z]+)?)(?![A-Za-z0-9])")
_SURNAME = re.compile(r"[ \t]+([A-Z][a-z]+(?:-[A-Z][a-z]+)?)(?![A-Za-z0-9])(?!['’][a-z]{2})")
# the words a name may follow ("Sister Loar", "Elder Price", "Coach Carter"): the name is the next word
_BEFORE_NAMES = frozenset("sister brother elder father mother aunt uncle saint st president bishop pastor coach "
                          "professor officer captain sir lady lord king queen prince princess".split())


def _surname_end(text: str, end: int) -> int:
    """Where a name whose first word ends at ``end`` ends: after at most two capitalised words that
    follow it on the same line and are not known words."""
    for _ in range(2):
        m = _SURNAME.match(text, end)
        if m is None or m.group(1).lower() in _EN_NOT_NAMES:
            break
        end = m.end()
    return end
