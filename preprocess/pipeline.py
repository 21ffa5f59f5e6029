"""`dialogbert preprocess`: messenger exports -> anonymized, deduplicated conversation shards.

    run(inputs, out, workers=1, session_gap_minutes=360.0, sentence_backend="punct",
        shard_size=10000, resume=True, progress=True, mark_speakers=())
        -> summary dict (also out/manifest.json)

Per input file (one task; files run in parallel with ``workers``)::

    read    read the file once: collect participant names per conversation key (speakers
            and names in system lines); drop system lines, media placeholders, empty and
            overlong messages; one line (NFC); split sessions on the time gap; merge
            consecutive messages of a speaker into turns; pseudonyms S1, S2, ... in order of
            first appearance in the session; spool every closed session (text not yet
            anonymized) to an anonymous temporary file
    write   read the spool back, now that the names of the whole file are known:
            anonymize (names of that key -> [NAME], PII -> placeholders) -> soynlp-style
            repeat normalization; split sentences; drop sessions with fewer than two
            speakers; stream every kept session to a part file
    done    out/.parts/<sha256>-<options>.jsonl is renamed into place, then the
            .done.json marker (the file's counts) is written atomically, last

Then the main process assembles, deterministically: part files in input order, a session
dropped when its content hash was already seen earlier in the run (across files too),
shard-00000.jsonl ... of ``shard_size`` conversations each (atomic writes), stale shards
removed, manifest.json written last. A killed run reruns only the files without a marker.
Same inputs and options give the same bytes, with any number of workers. docs/preprocess.md
has the rules and the reasons.

``mark_speakers`` (display names as exported, compared by :func:`speaker_key`): the turns of
those speakers carry ``"marked": true`` in the shards (`dialogbert bot --reply-as`: whose replies
the bot gives). Pseudonyms are per session, so the names are matched while reading; they reach
the workers in memory only and are written nowhere. Such a run reuses no part file (another
run's marks may differ), and its part files are tagged apart from unmarked ones.
"""
from __future__ import annotations

import functools
import hashlib
import json
import marshal
import multiprocessing as mp
import os
import re
import shutil
import sys
import tempfile
import time
import unicodedata
from collections import Counter, OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import formats
from .anonymize import Anonymizer
from .formats import BadLine, FormatError, detect, iter_messages
from .normalize import normalize_repeats, to_one_line
from .schema import SCHEMA_VERSION, atomic_write_text
from .sentences import BACKENDS, DEFAULT_BACKEND, SentenceSplitter

PARTS_DIR = ".parts"           # per-input results and done markers, inside the output folder
PARTS_VERSION = 1              # bump when the per-file processing changes its output
MAX_SESSION_MESSAGES = 1000    # a longer session is cut into consecutive sessions
MAX_OPEN_SESSIONS = 256        # conversation keys buffered at once (least recently used closes)
MAX_MESSAGE_CHARS = 20_000     # longer messages are dropped ("overlong_message")
BAD_LINE_EXAMPLES = 10         # bad lines named per file in the manifest (all are counted)
PROGRESS_EVERY = 2048          # messages between progress-counter updates

# Labels the apps give the exporting user: speakers, but not names to mask inside text.
GENERIC_SELF = frozenset({"회원님", "나", "you", "me", "나와의 채팅"})
# Files that sit beside data in folders and are no export; skipped (and listed) when a folder is walked.
_NOT_DATA = re.compile(r"^(readme|license|licence|notice|copying|authors|changelog)(\.|$)|\.(md|rst)$", re.I)


# --------------------------------------------------------------------------- media, system names

_MEDIA = [(kind, re.compile(p, re.I)) for kind, p in (
    ("photo", r"(사진( \d+장)?|<사진>|photos?|<photo>|\[photo\]|\[写真\]|圖片|图片)"),
    ("video", r"(동영상|<동영상>|videos?|<video>|\[video\]|\[動画\])"),
    ("emoticon", r"(이모티콘|\(이모티콘\)|\(emoticon\)|emoticons?|<이모티콘>|\[sticker\]|\[スタンプ\]|貼圖|贴图|stickers?)"),
    ("voice", r"(음성메시지|보이스톡 해요|\[voice message\]|voice message)"),
    ("file", r"(파일: .+|file: .+|\[file\].*)"),
    ("deleted", r"(삭제된 메시지입니다\.?|this message was deleted\.?|message unsent\.?)"),
)]


def _fallback_media_kind(text: str) -> str | None:
    """Used until preprocess.formats provides media_kind: the placeholders of shared/FORMATS.md."""
    t = text.strip()
    if len(t) > 120:
        return None
    for kind, pat in _MEDIA:
        if pat.fullmatch(t):
            return kind
    return None


def _media_kind() -> Callable[[str], str | None]:
    return getattr(formats, "media_kind", None) or _fallback_media_kind


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


# --------------------------------------------------------------------------- helpers

def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


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


@dataclass(frozen=True)
class Options:
    session_gap_minutes: float = 360.0
    sentence_backend: str = DEFAULT_BACKEND
    shard_size: int = 10000
    mark: tuple[str, ...] = ()     # speaker_key()s whose turns are marked (never part of a file name)

    def parts_tag(self) -> str:
        """What a part file depends on; shard_size only matters at assembly."""
        s = (f"v{PARTS_VERSION}|{self.session_gap_minutes!r}|{self.sentence_backend}|{MAX_SESSION_MESSAGES}"
             f"|{MAX_MESSAGE_CHARS}|{code_hash()}" + ("|marked" if self.mark else ""))
        return hashlib.sha1(s.encode()).hexdigest()[:8]


@functools.lru_cache(maxsize=1)
def code_hash() -> str:
    """A hash of the preprocessor's own source: after a code change (a new detector, say) a resumed
    run redoes every file instead of reusing parts written by the old code, which might leak."""
    h = hashlib.sha1()
    for f in sorted(Path(__file__).resolve().parent.rglob("*.py")):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:12]


# --------------------------------------------------------------------------- one file

class _Session:
    __slots__ = ("key", "messages", "last_time")

    def __init__(self, key: str):
        self.key = key
        self.messages: list[tuple[str, str, object]] = []   # (raw speaker, text, time)
        self.last_time = None


_progress_counter = None   # a multiprocessing.Value shared with the pool, or None
_progress_hook = None      # in-process runs (workers=1): refreshes the bar as messages are read


def _init_worker(counter, hook=None) -> None:
    global _progress_counter, _progress_hook
    _progress_counter, _progress_hook = counter, hook


def _tick(n: int) -> None:
    if _progress_counter is not None and n:
        with _progress_counter.get_lock():
            _progress_counter.value += n
        if _progress_hook is not None:
            _progress_hook()


class _FileProcessor:
    """One input file, read once.

    read()   parses the export: names per conversation key (speakers, names in system lines),
             drops, one-line text, sessions and turns; every kept session goes to a spool file
             as it closes, in that order, its text not yet anonymized.
    write()  reads the spool back once the names of the whole file are known (a name first
             seen late in the file must still be masked in earlier sessions): anonymize,
             normalize repeats, split sentences, write the part file.

    Same output as reading the export twice (names first, then everything else), which this
    replaces: what decides a session, a turn or a drop never depends on the anonymized text
    (a non-empty one-line text stays non-empty and stripped through anonymization and repeat
    normalization), so only the text is finished late. The spool is an anonymous temporary file
    (unlinked at once: nothing is left behind if the process dies)."""

    def __init__(self, path: str, sha256: str, fmt: str, opts: Options, out_file):
        self.path, self.sha256, self.fmt, self.opts, self.out = path, sha256, fmt, opts, out_file
        self.gap_s = opts.session_gap_minutes * 60.0
        self.mark = frozenset(opts.mark)
        self.splitter = SentenceSplitter(opts.sentence_backend)
        self.media_kind = _media_kind()
        self.c = Counter()            # messages, system, sessions, conversations, turns, ...
        self.drops = Counter()
        self.media = Counter()
        self.pii = Counter()
        self.bad_examples: list[str] = []
        self.last_line = 0

    def run(self, spool_dir: str | os.PathLike | None = None) -> None:
        with tempfile.TemporaryFile(dir=spool_dir) as spool:
            names = self.read(spool)
            spool.seek(0)
            self.write(spool, names)

    def read(self, spool) -> dict[str, set[str]]:
        # The hot loop: counters are local ints (added to the Counters at the end, and only when
        # non-zero, as the Counters would hold them), module settings are read once per file,
        # and the previous message's key is remembered so that a one-room export (every
        # message of key "") skips the LRU bookkeeping, which is a no-op for the key used last.
        names: dict[str, set[str]] = {}
        open_sessions: OrderedDict[str, _Session] = OrderedDict()
        gap = self.gap_s
        max_messages, max_open, max_chars = MAX_SESSION_MESSAGES, MAX_OPEN_SESSIONS, MAX_MESSAGE_CHARS
        c, drops, media = self.c, self.drops, self.media
        media_kind = self.media_kind

        def close(sess: _Session) -> None:
            self._spool(sess, spool)

        n = ticked = n_system = n_no_speaker = n_media = n_empty = 0
        cur_key: str | None = None      # key of the last message appended ...
        cur: _Session | None = None     # ... and its session: open, and last in open_sessions
        name_key: str | None = None
        key_names: set[str] = set()
        line = self.last_line
        try:
            for item in iter_messages(self.path, self.fmt):
                if isinstance(item, BadLine):
                    c["bad_lines"] += 1
                    if len(self.bad_examples) < BAD_LINE_EXAMPLES:
                        # file:line and the reason only: a raw line may hold personal data, and
                        # the manifest, the part markers and stderr are never anonymized
                        self.bad_examples.append(f"{self.path}:{item.line}: {item.reason}")
                    continue
                line = item.line
                n += 1
                if n - ticked >= PROGRESS_EVERY:
                    _tick(n - ticked)
                    ticked = n
                key = item.conv
                if key != name_key:
                    key_names = names.get(key)
                    if key_names is None:
                        key_names = names[key] = set()
                    name_key = key
                if item.system:
                    n_system += 1
                    key_names.update(system_names(item.text))
                    continue
                speaker = item.speaker
                if not speaker:
                    n_no_speaker += 1
                    continue
                key_names.add(speaker)
                kind = media_kind(item.text)
                if kind:
                    media[kind] += 1
                    n_media += 1
                    continue
                text = to_one_line(item.text)
                if len(text) > max_chars:
                    drops["overlong_message"] += 1
                    if len(self.bad_examples) < BAD_LINE_EXAMPLES:
                        self.bad_examples.append(f"{self.path}:{line}: message of {len(text)} characters "
                                                 f"dropped (limit {max_chars})")
                    continue
                if not text:
                    n_empty += 1
                    continue
                t = item.time
                if key == cur_key:
                    sess = cur
                else:
                    sess = open_sessions.get(key)
                    if sess is not None:
                        open_sessions.move_to_end(key)
                if sess is not None:
                    last = sess.last_time
                    if t is not None and last is not None and t is not last and (t - last).total_seconds() > gap:
                        close(open_sessions.pop(key))
                        sess = None
                    elif len(sess.messages) >= max_messages:
                        c["sessions_capped"] += 1
                        close(open_sessions.pop(key))
                        sess = None
                if sess is None:
                    sess = open_sessions[key] = _Session(key)
                    if len(open_sessions) > max_open:
                        close(open_sessions.popitem(last=False)[1])
                sess.messages.append((speaker, text, t))
                if t is not None:
                    sess.last_time = t
                cur_key, cur = key, sess
        finally:
            self.last_line = line
        _tick(n - ticked)
        for sess in open_sessions.values():
            close(sess)
        for counter, k, v in ((c, "messages", n), (drops, "system", n_system), (drops, "no_speaker", n_no_speaker),
                              (drops, "media", n_media), (drops, "empty_message", n_empty)):
            if v:
                counter[k] += v
        return names

    def _spool(self, sess: _Session, spool) -> None:
        """A closed session -> its turns (pseudonym, messages, first time) on the spool. One with
        fewer than two speakers is dropped, but spooled too: its messages count in ``pii`` (as
        they did when every message was anonymized while reading)."""
        self.c["sessions"] += 1
        pseudo: dict[str, str] = {}
        turns: list[tuple[str, list[str], str | None]] = []
        last_p = None
        msgs: list[str] = []
        for speaker, text, t in sess.messages:
            p = pseudo.get(speaker)
            if p is None:
                p = pseudo[speaker] = f"S{len(pseudo) + 1}"
            if p == last_p:
                msgs.append(text)
            else:
                msgs = [text]
                turns.append((p, msgs, t.isoformat() if t is not None else None))
                last_p = p
        keep = len(pseudo) >= 2
        if not keep:
            self.drops["one_speaker"] += 1
        marked = [p for s, p in pseudo.items() if speaker_key(s) in self.mark] if self.mark else []
        blob = marshal.dumps((sess.key, turns, keep, marked))
        spool.write(len(blob).to_bytes(4, "little"))
        spool.write(blob)

    def write(self, spool, names: dict[str, set[str]]) -> None:
        anonymizers: OrderedDict[str, Anonymizer] = OrderedDict()   # a cache: eviction never changes output
        pii, read, max_open = self.pii, spool.read, MAX_OPEN_SESSIONS
        split = None if self.splitter.backend == "none" else self.splitter.split_turn
        anon_key: str | None = None
        replace = None
        while head := read(4):
            key, turns, keep, marked = marshal.loads(read(int.from_bytes(head, "little")))
            if key != anon_key:
                anon = anonymizers.get(key)
                if anon is None:
                    anon = anonymizers[key] = Anonymizer(mask_names(names.get(key, ())))
                    if len(anonymizers) > max_open:
                        anonymizers.popitem(last=False)
                else:
                    anonymizers.move_to_end(key)
                anon_key, replace = key, anon.replace
            if not keep:
                for _, msgs, _ in turns:
                    for text in msgs:
                        for span in replace(text)[1]:
                            pii[span[2]] += 1
                continue
            out: list[dict] = []
            for p, msgs, when in turns:
                for k, text in enumerate(msgs):
                    text, spans = replace(text)
                    for span in spans:
                        pii[span[2]] += 1
                    msgs[k] = normalize_repeats(text).strip()
                text = "\n".join(msgs)
                out.append({"speaker": p, "text": text,
                            # backend "none": split_turn's answer, one sentence per message
                            "sentences": text.split("\n") if split is None else split(text),
                            "time": when})
                if p in marked:
                    out[-1]["marked"] = True
            self._write(key, out)

    def _write(self, key: str, turns: list[dict]) -> None:
        turns_hash = content_hash(turns)
        conv = {"id": conversation_id(self.fmt, key, turns_hash), "source": self.fmt,
                "lang": detect_lang(t["text"] for t in turns), "turns": turns}
        self.c["conversations"] += 1
        self.c["turns"] += len(turns)
        self.out.write(turns_hash + "\t"
                       + json.dumps(conv, ensure_ascii=False, separators=(",", ":")) + "\n")

    def stats(self) -> dict:
        return {"format": self.fmt, "sha256": self.sha256, "counts": dict(sorted(self.c.items())),
                "drops": dict(sorted(self.drops.items())), "media": dict(sorted(self.media.items())),
                "pii": dict(sorted(self.pii.items())), "bad_line_examples": self.bad_examples,
                "kss_calls": self.splitter.kss_calls}


def process_file(job: tuple) -> dict:
    """One input file -> its part file + done marker. Runs in a pool worker (spawn-safe: plain
    arguments, module-level function). Returns the file's stats, or {"error": ...}."""
    path, parts_dir, opts_dict = job
    opts = Options(**opts_dict)
    parts_dir = Path(parts_dir)
    try:
        sha = file_sha256(path)
    except OSError as e:
        return {"path": path, "error": f"{path}: cannot read: {e.strerror or e}"}
    base = f"{sha}-{opts.parts_tag()}"
    part, marker = parts_dir / f"{base}.jsonl", parts_dir / f"{base}.done.json"
    if marker.exists() and part.exists():
        try:
            stats = json.loads(marker.read_text("utf-8"))
            stats.update(path=path, resumed=True)
            return stats
        except ValueError:
            pass   # a damaged marker: redo the file
    tmp = parts_dir / f".{base}.jsonl.tmp-{os.getpid()}"
    proc = None
    try:
        if os.path.getsize(path) == 0:
            raise FormatError(path, "empty file")
        fmt = detect(path)
        with open(tmp, "w", encoding="utf-8") as out:
            proc = _FileProcessor(path, sha, fmt, opts, out)
            proc.run(parts_dir)
            out.flush()
            os.fsync(out.fileno())
        if proc.c["messages"] == 0:
            if proc.c["bad_lines"]:
                first = proc.bad_examples[0] if proc.bad_examples else ""
                raise FormatError(path, f"no message could be read ({proc.c['bad_lines']} bad lines; first: {first})")
            raise FormatError(path, f"no messages found (format {fmt})")
        os.replace(tmp, part)
        stats = proc.stats()
        atomic_write_text(marker, json.dumps(stats, ensure_ascii=False, sort_keys=True))
        stats.update(path=path, resumed=False)
        return stats
    except FormatError as e:
        return {"path": path, "error": str(e)}
    except UnicodeDecodeError as e:
        near = f":{proc.last_line + 1}" if proc and proc.last_line else ""
        return {"path": path, "error": f"{path}{near}: cannot decode the text ({e.encoding}: {e.reason}); "
                                       "re-save it as UTF-8"}
    except Exception as e:   # noqa: BLE001 - one bad file must not stop the run; named in the manifest
        near = f":{proc.last_line}" if proc and proc.last_line else ""
        return {"path": path, "error": f"{path}{near}: {type(e).__name__}: {e}"}
    finally:
        if tmp.exists():
            tmp.unlink()


# --------------------------------------------------------------------------- the run

def _is_our_output(folder: Path, out: Path) -> bool:
    try:
        if folder.resolve() == out:
            return True
    except OSError:
        return False
    # a finished run has both; a killed one may lack the manifest (deleted when a run starts)
    return (folder / PARTS_DIR).is_dir() or ((folder / "manifest.json").is_file() and any(folder.glob("shard-*.jsonl")))


def discover(inputs: list[str], out: str | os.PathLike) -> tuple[list[str], list[dict], list[str]]:
    """Input files in a stable order (as given; folders walked in sorted order, hidden entries,
    our own output folders and README/LICENSE-like files skipped). Returns (files, failed, skipped)."""
    out_r = Path(out).resolve()
    files, failed, skipped, seen = [], [], [], set()

    def add(p: Path) -> None:
        r = p.resolve()
        if r in seen or out_r in r.parents:
            return
        seen.add(r)
        files.append(str(p))

    for inp in inputs:
        p = Path(inp)
        if p.is_file():
            add(p)
        elif p.is_dir():
            if _is_our_output(p, out_r):
                skipped.append(str(p))
                continue
            for root, dirs, names in os.walk(p):
                root_p = Path(root)
                keep = []
                for d in sorted(dirs):
                    if d.startswith("."):
                        continue
                    if _is_our_output(root_p / d, out_r):
                        skipped.append(str(root_p / d))
                    else:
                        keep.append(d)
                dirs[:] = keep
                for name in sorted(names):
                    if name.startswith("."):
                        continue
                    if _NOT_DATA.search(name):
                        skipped.append(str(root_p / name))
                        continue
                    if (root_p / name).is_file():
                        add(root_p / name)
        else:
            failed.append({"path": str(inp), "error": f"{inp}: no such file or folder"})
    return files, failed, skipped


class _ShardWriter:
    """Streams conversation lines into shard-NNNNN.jsonl files of ``size`` lines each; every
    shard goes to a temporary name first and is renamed when complete (memory: one line)."""

    def __init__(self, out: Path, size: int):
        self.out, self.size = out, size
        self.shards: list[dict] = []
        self.f = None
        self.tmp: Path | None = None
        self.n = 0

    def write(self, line: str) -> None:
        if self.f is None:
            self.tmp = self.out / f".shard-{len(self.shards):05d}.jsonl.tmp-{os.getpid()}"
            self.f = open(self.tmp, "w", encoding="utf-8")
        self.f.write(line)
        self.n += 1
        if self.n >= self.size:
            self.close()

    def close(self) -> None:
        if self.f is None:
            return
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        name = f"shard-{len(self.shards):05d}.jsonl"
        os.replace(self.tmp, self.out / name)
        self.shards.append({"file": name, "conversations": self.n})
        self.f, self.tmp, self.n = None, None, 0


def _assemble(out: Path, parts_dir: Path, results: list[dict], opts: Options) -> tuple[list[dict], Counter]:
    """Part files -> shard-NNNNN.jsonl, in input order, first copy of each session kept."""
    seen: set[bytes] = set()
    dups: Counter = Counter()
    writer = _ShardWriter(out, opts.shard_size)
    try:
        for r in results:
            if "error" in r or r.get("duplicate_of"):
                continue
            part = parts_dir / f"{r['sha256']}-{opts.parts_tag()}.jsonl"
            with open(part, encoding="utf-8") as f:
                for line in f:
                    h, _, js = line.partition("\t")
                    d = bytes.fromhex(h)
                    if d in seen:
                        dups[r["path"]] += 1
                        continue
                    seen.add(d)
                    writer.write(js)
        writer.close()
    finally:
        if writer.tmp is not None and writer.tmp.exists():
            writer.f.close()
            writer.tmp.unlink()
    keep = {s["file"] for s in writer.shards}
    for old in out.glob("shard-*.jsonl"):
        if old.name not in keep:
            old.unlink()
    return writer.shards, dups


def _summary_table(m: dict) -> str:
    rows = [("input", "format", "messages", "conversations", "duplicates", "bad lines")]
    for i in m["inputs"]:
        rows.append((i["path"], i["format"], str(i["messages"]), str(i["conversations"]),
                     str(i["duplicates"]), str(i["bad_lines"])))
    for f in m["failed"]:
        rows.append((f["path"], "FAILED", "-", "-", "-", "-"))
    t = m["totals"]
    rows.append(("total", "", str(t["messages"]), str(t["conversations"]), str(t["duplicates"]), str(t["bad_lines"])))
    w = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w[i]) if i < 2 else c.rjust(w[i]) for i, c in enumerate(r)) for r in rows]
    lines.insert(1, "  ".join("-" * x for x in w))
    lines.insert(-1, lines[1])
    drops = ", ".join(f"{k} {v}" for k, v in m["drops"].items()) or "none"
    pii = ", ".join(f"{k} {v}" for k, v in m["pii"].items()) or "none"
    lines += [f"dropped: {drops}", f"placeholders: {pii}",
              f"shards: {len(m['shards'])} in {m['out']}"]
    return "\n".join(lines)


def run(inputs: list[str], out: str, workers: int = 1, session_gap_minutes: float = 360.0,
        sentence_backend: str = DEFAULT_BACKEND, shard_size: int = 10000, resume: bool = True,
        progress: bool = True, mark_speakers=()) -> dict:
    """Preprocess ``inputs`` (files or folders) into ``out``; returns the manifest as a dict
    (``summary["failed"]`` lists the inputs that could not be read, with the reason). The turns
    of ``mark_speakers`` (display names) carry ``"marked": true``; such a run does not resume."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    if sentence_backend not in BACKENDS:
        raise ValueError(f"sentence_backend={sentence_backend!r}: choose one of {', '.join(BACKENDS)}")
    if not session_gap_minutes > 0:
        raise ValueError(f"session_gap_minutes={session_gap_minutes}: must be > 0 (minutes of silence)")
    if shard_size < 1 or workers < 1:
        raise ValueError(f"shard_size={shard_size}, workers={workers}: both must be >= 1")
    if isinstance(mark_speakers, str):
        mark_speakers = [mark_speakers]
    mark = tuple(sorted({speaker_key(n) for n in mark_speakers} - {""}))
    opts = Options(float(session_gap_minutes), sentence_backend, int(shard_size), mark)
    out_p = Path(out)
    out_p.mkdir(parents=True, exist_ok=True)
    parts_dir = out_p / PARTS_DIR
    if (not resume or mark) and parts_dir.exists():
        shutil.rmtree(parts_dir)
    parts_dir.mkdir(exist_ok=True)
    for stale in [*parts_dir.glob(".*.tmp-*"), *out_p.glob(".shard-*.jsonl.tmp-*")]:   # left by a killed run
        stale.unlink()
    (out_p / "manifest.json").unlink(missing_ok=True)   # no manifest = the folder is not complete

    files, failed, skipped = discover(list(inputs), out_p)
    for f in failed:
        print(f"dialogbert preprocess: {f['error']}", file=sys.stderr)
    if skipped:
        print(f"dialogbert preprocess: skipped {len(skipped)} non-data file(s): {', '.join(skipped[:5])}", file=sys.stderr)
    jobs = [(path, str(parts_dir), {"session_gap_minutes": opts.session_gap_minutes,
                                    "sentence_backend": opts.sentence_backend,
                                    "shard_size": opts.shard_size, "mark": opts.mark}) for path in files]
    results: dict[str, dict] = {}

    bar = None
    if progress and jobs:
        from tqdm import tqdm
        bar = tqdm(total=len(jobs), unit="file", desc="preprocess", file=sys.stderr, dynamic_ncols=True)

    def done(r: dict, counter) -> None:
        results[r["path"]] = r
        say = (lambda s: bar.write(s, file=sys.stderr)) if bar is not None else (lambda s: print(s, file=sys.stderr))
        if "error" in r:
            say(f"dialogbert preprocess: {r['error']}")
        for ex in r.get("bad_line_examples", [])[:5]:
            if not r.get("resumed"):
                say(f"dialogbert preprocess: warning: {ex}")
        if bar is not None:
            bar.update(1)
            bar.set_postfix_str(f"{counter.value if counter else 0:,} messages", refresh=True)

    ctx = mp.get_context("spawn")      # spawn everywhere: no fork of a process holding kss or locks
    counter = ctx.Value("q", 0) if bar is not None else None
    t0 = time.perf_counter()
    if workers == 1 or len(jobs) <= 1:
        last = [0.0]

        def hook() -> None:
            now = time.monotonic()
            if now - last[0] > 0.2:
                last[0] = now
                bar.set_postfix_str(f"{counter.value:,} messages", refresh=True)

        _init_worker(counter, hook if bar is not None else None)
        try:
            for job in jobs:
                if bar is not None:
                    bar.set_description_str(f"preprocess {Path(job[0]).name[:30]}")
                done(process_file(job), counter)
        finally:
            _init_worker(None)
    else:
        with ctx.Pool(min(workers, len(jobs)), initializer=_init_worker, initargs=(counter,)) as pool:
            pending = [pool.apply_async(process_file, (job,)) for job in jobs]
            while pending:
                still = []
                for a in pending:
                    if a.ready():
                        done(a.get(), counter)
                    else:
                        still.append(a)
                pending = still
                if pending:
                    if bar is not None:
                        bar.set_postfix_str(f"{counter.value:,} messages", refresh=True)
                    time.sleep(0.1)
    if bar is not None:
        bar.close()
    elapsed = time.perf_counter() - t0

    # input order, not completion order: the output must not depend on scheduling
    ordered = [results[p] for p in files]
    first_by_sha: dict[str, str] = {}
    for r in ordered:
        if "error" in r:
            failed.append({"path": r["path"], "error": r["error"]})
            continue
        if r["sha256"] in first_by_sha:
            r["duplicate_of"] = first_by_sha[r["sha256"]]
        else:
            first_by_sha[r["sha256"]] = r["path"]
    shards, dups = _assemble(out_p, parts_dir, ordered, opts)

    totals, drops, pii, media = Counter(), Counter(), Counter(), Counter()
    inputs_m = []
    for r in ordered:
        if "error" in r:
            continue
        cnt = Counter(r["counts"])
        entry = {"path": r["path"], "sha256": r["sha256"], "format": r["format"],
                 "messages": cnt["messages"], "sessions": cnt["sessions"],
                 "conversations": 0 if r.get("duplicate_of") else cnt["conversations"] - dups[r["path"]],
                 "duplicates": dups[r["path"]], "bad_lines": cnt["bad_lines"],
                 "drops": r["drops"], "bad_line_examples": r["bad_line_examples"]}
        if r.get("duplicate_of"):
            entry["duplicate_of"] = r["duplicate_of"]
            entry["duplicates"] = cnt["conversations"]
        inputs_m.append(entry)
        totals.update(messages=cnt["messages"], sessions=cnt["sessions"], bad_lines=cnt["bad_lines"],
                      sessions_capped=cnt["sessions_capped"], duplicates=entry["duplicates"],
                      conversations=entry["conversations"])
        if not r.get("duplicate_of"):
            totals["turns"] += cnt["turns"]
            drops.update(r["drops"])
            pii.update(r["pii"])
            media.update(r["media"])
    drops["duplicate"] += totals["duplicates"]
    totals["files"] = len(inputs_m)
    totals["failed"] = len(failed)
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "options": {"session_gap_minutes": opts.session_gap_minutes, "sentence_backend": opts.sentence_backend,
                    "shard_size": opts.shard_size, "max_session_messages": MAX_SESSION_MESSAGES,
                    "max_message_chars": MAX_MESSAGE_CHARS, "parts_version": PARTS_VERSION},
        "totals": {k: totals[k] for k in ("files", "failed", "messages", "sessions", "conversations",
                                          "turns", "duplicates", "bad_lines", "sessions_capped")},
        "drops": {k: v for k, v in sorted(drops.items()) if v},
        "media": dict(sorted(media.items())),
        "pii": dict(sorted(pii.items())),
        "inputs": inputs_m,
        "failed": failed,
        "skipped": skipped,
        "shards": shards,
    }
    atomic_write_text(out_p / "manifest.json", json.dumps(manifest, ensure_ascii=False, indent=1) + "\n")
    summary = dict(manifest, out=str(out_p), seconds=round(elapsed, 3),
                   resumed_files=sum(1 for r in ordered if r.get("resumed")))
    print(_summary_table(summary), flush=True)
    return summary
