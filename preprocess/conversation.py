"""What the per-file processor needs to know about a conversation's text: names in system
lines, which names to mask, the dedup hash, the id and the language of a conversation."""
from __future__ import annotations

import hashlib
import re
import unicodedata

from .normalize import to_one_line

# Labels the apps give the exporting user: speakers, but not names to mask inside text.
GENERIC_SELF = frozenset({"회원님", "나", "you", "me", "나와의 채팅"})

_KO_SYSTEM_SPLIT = re.compile(r"님(?:이|과|와|을|를|께서|에게|의)?[\s,]*")
_EN_INVITE = re.compile(r"^(.+?) invited (.+?)\.?$")
_EN_ONE = re.compile(r"^(.+?) (?:left|joined|has left|has joined|was kicked|has been kicked|entered|came in)\b")


def system_names(text: str) -> list[str]:
    """Participant names in an invite/leave/kick line (Korean or English UI); [] otherwise."""
    t = to_one_line(text)
    if "님" in t:
        parts = _KO_SYSTEM_SPLIT.split(t)
        return [p.strip() for p in parts[:-1] if p.strip()]
    m = _EN_INVITE.match(t)
    if m:
        rest = re.split(r",\s*(?:and\s+)?|\s+and\s+", m.group(2))
        return [n.strip() for n in [m.group(1), *rest] if n.strip()]
    m = _EN_ONE.match(t)
    return [m.group(1).strip()] if m else []


def speaker_key(name: str) -> str:
    """How a display name is matched against ``mark_speakers``: NFC, whitespace collapsed, case folded."""
    return " ".join(unicodedata.normalize("NFC", name).split()).casefold()


def mask_names(names) -> list[str]:
    return sorted({n for n in names if n and n.strip().casefold() not in GENERIC_SELF})



def conversation_id(fmt: str, key: str, turns_hash: str) -> str:
    """A conversation's id, and so its train/test side (preprocess.schema.split_of): a function of
    the session's own content, not of the file it came in, so a re-export of the same chat (a file
    that grew by new messages) keeps the ids, and the split, of every session it already had."""
    return hashlib.sha1(f"{fmt}\x1f{key}\x1f{turns_hash}".encode("utf-8")).hexdigest()[:16]


def content_hash(turns: list[dict]) -> str:
    """Dedup key: pseudonyms and normalized texts of the turns (not times, ids or sources)."""
    h = hashlib.blake2b(digest_size=16)
    for t in turns:
        h.update(t["speaker"].encode() + b"\x1f" + t["text"].encode("utf-8") + b"\x1e")
    return h.hexdigest()


_HANGUL = re.compile(r"[\uac00-\ud7a3\u3131-\u318e]")
_LATIN = re.compile(r"[A-Za-z]")
_PLACEHOLDER = re.compile(r"\[[A-Z]+\]")
_OTHER_LETTER = re.compile(r"[^\W\d_A-Za-z\uac00-\ud7a3\u3131-\u318e]")


_NOT_KO_EN = re.compile(r"[^\x00-\x7f\uac00-\ud7a3\u3131-\u318e]")
_ASCII_LETTERS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def detect_lang(texts) -> str:
    """"ko" / "en" / "other" by the share of Hangul vs Latin letters (placeholders ignored)."""
    text = _PLACEHOLDER.sub("", " ".join(texts))
    if _NOT_KO_EN.search(text) is None:
        # Only ASCII and _HANGUL characters (the usual case): count in UTF-8 bytes, the same
        # numbers as the regexes below. Every _HANGUL character is 3 bytes (2 more than one
        # character), an ASCII letter is 1 byte, and no other letter can occur.
        b = text.encode("utf-8")
        hangul, latin, other = (len(b) - len(text)) // 2, len(b) - len(b.translate(None, _ASCII_LETTERS)), 0
    else:
        hangul, latin = len(_HANGUL.findall(text)), len(_LATIN.findall(text))
        other = len(_OTHER_LETTER.findall(text))
    if hangul + latin == 0 or other > hangul + latin:
        return "other"
    return "ko" if hangul >= latin else "en"

