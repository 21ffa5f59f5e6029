"""The per-file processor: one input file -> its part file (one JSON conversation per line,
prefixed by its content hash) and a done marker with the file's counts.

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

A killed run reruns only the files without a marker; docs/preprocess.md has the rules.
About 400 lines because the read and write passes share one object's state (the spool, the
per-key names, the counts); what does not (discovery, assembly, the run) lives in its own module.
"""
from __future__ import annotations

import functools
import hashlib
import json
import marshal
import os
import tempfile
from collections import Counter, OrderedDict
from dataclasses import dataclass
from pathlib import Path

from . import inputs
from .anonymize import Anonymizer
from .conversation import content_hash, conversation_id, detect_lang, mask_names, speaker_key, system_names
from .formats import BadLine, FormatError, detect, iter_messages, media_kind
from .normalize import normalize_repeats, to_one_line
from .schema import atomic_write_text
from .sentences import DEFAULT_BACKEND, SentenceSplitter

PARTS_DIR = ".parts"           # per-input results and done markers, inside the output folder
PARTS_VERSION = 1              # bump when the per-file processing changes its output
MAX_SESSION_MESSAGES = 1000    # a longer session is cut into consecutive sessions
MAX_OPEN_SESSIONS = 256        # conversation keys buffered at once (least recently used closes)
MAX_MESSAGE_CHARS = 20_000     # longer messages are dropped ("overlong_message")
BAD_LINE_EXAMPLES = 10         # bad lines named per file in the manifest (all are counted)
PROGRESS_EVERY = 2048          # messages between progress-counter updates


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with inputs.open_binary(path) as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()



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
        self.media_kind = media_kind
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

        def close(sess: _Session, why: str) -> None:
            self._close(sess, spool, why)

        n = ticked = n_system = n_no_speaker = n_media = n_empty = 0
        cur_key: str | None = None      # key of the last message appended ...
        cur: _Session | None = None     # ... and its session: open, and last in open_sessions
        name_key: str | None = None
        key_names: set[str] = set()
        line = self.last_line
        try:
            for item in self.items():
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
                        close(open_sessions.pop(key), "gap")
                        sess = None
                    elif len(sess.messages) >= max_messages:
                        c["sessions_capped"] += 1
                        close(open_sessions.pop(key), "cap")
                        sess = None
                if sess is None:
                    sess = open_sessions[key] = _Session(key)
                    if len(open_sessions) > max_open:
                        close(open_sessions.popitem(last=False)[1], "lru")
                sess.messages.append((speaker, text, t))
                if t is not None:
                    sess.last_time = t
                cur_key, cur = key, sess
        finally:
            self.last_line = line
        _tick(n - ticked)
        for sess in open_sessions.values():
            close(sess, "end")
        for counter, k, v in ((c, "messages", n), (drops, "system", n_system), (drops, "no_speaker", n_no_speaker),
                              (drops, "media", n_media), (drops, "empty_message", n_empty)):
            if v:
                counter[k] += v
        return names

    def items(self):
        """The file's messages, system lines and bad lines, in file order."""
        return iter_messages(self.path, self.fmt)

    def _close(self, sess: _Session, spool, why: str) -> None:
        """A session ends (``why``: "gap", "cap", "lru" or "end" of the file): spool it."""
        self._spool(sess, spool)

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


def part_paths(parts_dir: Path, sha: str, opts: Options) -> tuple[Path, Path]:
    """(part file, done marker) of a file with content ``sha`` under these options."""
    base = f"{sha}-{opts.parts_tag()}"
    return parts_dir / f"{base}.jsonl", parts_dir / f"{base}.done.json"


def resumed(path: str, parts_dir: Path, sha: str, opts: Options) -> dict | None:
    """The stats of an earlier run's finished part for this file, or None (none, or damaged)."""
    part, marker = part_paths(parts_dir, sha, opts)
    if marker.exists() and part.exists():
        try:
            stats = json.loads(marker.read_text("utf-8"))
            stats.update(path=path, resumed=True)
            return stats
        except ValueError:
            pass   # a damaged marker: redo the file
    return None


def check_read(path: str, fmt: str, stats: dict) -> None:
    """A file of which no message could be read is an error, not an empty success."""
    c = stats["counts"]
    if not c.get("messages"):
        if c.get("bad_lines"):
            first = stats["bad_line_examples"][0] if stats["bad_line_examples"] else ""
            raise FormatError(path, f"no message could be read ({c['bad_lines']} bad lines; first: {first})")
        raise FormatError(path, f"no messages found (format {fmt})")


def commit_part(tmp: Path, parts_dir: Path, opts: Options, stats: dict, path: str) -> None:
    """A complete part file (written to ``tmp``, fsynced) goes into place, then its marker, last.
    The marker names the input as :func:`preprocess.inputs.label` does (its bad-line examples)."""
    part, marker = part_paths(parts_dir, stats["sha256"], opts)
    os.replace(tmp, part)
    on_disk = dict(stats, bad_line_examples=inputs.labelled(stats["bad_line_examples"], path))
    atomic_write_text(marker, json.dumps(on_disk, ensure_ascii=False, sort_keys=True))


def failure(path: str, e: Exception, last_line: int = 0) -> dict:
    """The result of a file that failed: one line naming the file (and the line, when known)."""
    if isinstance(e, FormatError):
        return {"path": path, "error": str(e)}
    if isinstance(e, UnicodeDecodeError):
        near = f":{last_line + 1}" if last_line else ""
        return {"path": path, "error": f"{path}{near}: cannot decode the text ({e.encoding}: {e.reason}); "
                                       "re-save it as UTF-8"}
    near = f":{last_line}" if last_line else ""
    return {"path": path, "error": f"{path}{near}: {type(e).__name__}: {e}"}


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
    done = resumed(path, parts_dir, sha, opts)
    if done is not None:
        return done
    tmp = parts_dir / f".{sha}-{opts.parts_tag()}.jsonl.tmp-{os.getpid()}"
    proc = None
    try:
        if inputs.size(path) == 0:
            raise FormatError(path, "empty file")
        fmt = detect(path)
        with open(tmp, "w", encoding="utf-8") as out:
            proc = _FileProcessor(path, sha, fmt, opts, out)
            proc.run(parts_dir)
            out.flush()
            os.fsync(out.fileno())
        stats = proc.stats()
        check_read(path, fmt, stats)
        commit_part(tmp, parts_dir, opts, stats, path)
        stats.update(path=path, resumed=False)
        return stats
    except Exception as e:   # noqa: BLE001 - one bad file must not stop the run; named in the manifest
        return failure(path, e, proc.last_line if proc else 0)
    finally:
        if tmp.exists():
            tmp.unlink()
