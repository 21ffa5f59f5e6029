"""Opening an export as a stream of text lines, whatever the bytes look like.

    open_text(path) -> (text stream, encoding)      gzip by magic bytes; BOM, UTF-8, UTF-16, CP949
    iter_lines(f, encoding) -> (lineno, str | BadLine)   bounded lines, bad bytes reported
    iter_line_batches(f, encoding) -> [str | BadLine, ...]  the same lines, one list per chunk

Memory stays bounded: the encoding is chosen from the first 256 KB, the file is decoded as a
stream, and lines are cut from fixed-size chunks, so one 10 MB line costs at most ~1 MB.
"""
from __future__ import annotations

import codecs
import gzip
import io
import re
import zlib
from typing import IO, Iterator

from ..inputs import open_binary
from .base import BadLine, FormatError

MAX_LINE = 1 << 20          # characters; a longer line is reported as a BadLine and skipped
SNIFF_BYTES = 1 << 18       # bytes read to choose the encoding
CHUNK = 1 << 16             # characters decoded per read

# Undecodable bytes become this noncharacter, so a line that held them can be reported
# (a real U+FFFD in an export is kept as it is).
_MARK = "\U0010fffe"
codecs.register_error("dialogbert-mark", lambda err: (_MARK, err.end))

_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1a\x1c-\x1f\x7f]")
_READ_ERRORS = (OSError, EOFError, zlib.error)


class _Guarded(io.BufferedIOBase):
    """A gzip stream whose cut or corrupt end reads as EOF (kept in ``error``), so the text
    before the cut is not lost inside TextIOWrapper; iter_lines then reports the cut."""

    def __init__(self, f, raw=None):
        super().__init__()
        self.f, self.raw, self.error = f, raw, None   # raw: the compressed file, closed with it

    def readable(self):
        return True

    def seekable(self):
        return self.f.seekable()

    def seek(self, pos, whence=0):
        self.error = None
        return self.f.seek(pos, whence)

    def tell(self):
        return self.f.tell()

    def _guard(self, fn, n):
        if self.error is not None:
            return b""
        try:
            return fn(n)
        except _READ_ERRORS as e:
            self.error = e
            return b""

    def read(self, n=-1):
        return self._guard(self.f.read, n)

    def read1(self, n=-1):
        return self._guard(self.f.read1, n)

    def close(self):
        self.f.close()
        if self.raw is not None:
            self.raw.close()
        super().close()


def _open_binary(path) -> IO[bytes]:
    f = open_binary(path)
    gz = f.read(2) == b"\x1f\x8b"
    f.seek(0)
    return _Guarded(gzip.GzipFile(fileobj=f, mode="rb"), f) if gz else f


def read_head(path, size: int = SNIFF_BYTES) -> bytes:
    """The first bytes of the (decompressed) file; a cut gzip still gives its readable head
    (the reader reports the cut later)."""
    try:
        with open_binary(path) as f:
            raw = f.read(size)
            if raw[:2] != b"\x1f\x8b":
                return raw
            d, out = zlib.decompressobj(31), b""
            while raw and len(out) < size and not d.eof:
                buf = raw
                while buf and len(out) < size:
                    out += d.decompress(buf, size - len(out))
                    buf = d.unconsumed_tail
                raw = f.read(1 << 16)
            return out
    except (OSError, zlib.error) as e:
        raise FormatError(path, f"cannot read the file ({e})") from None


def sniff_encoding(head: bytes, path, complete: bool = False) -> str:
    """Choose a codec from the first bytes: BOM first, then strict UTF-8, then CP949."""
    if head.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if head.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        return "utf-32"
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    nul = head.count(0)
    if nul * 200 > len(head):                 # > 0.5% NUL bytes: UTF-16 without a BOM, or binary
        even, odd = head[0::2].count(0), head[1::2].count(0)
        half = max(1, len(head) // 2)
        # ASCII puts its NUL in the high byte; a few Hangul/CJK code points have a NUL low byte
        if odd > 4 * even and odd > half // 20:    # UTF-16-LE without a BOM
            return _checked(head, "utf-16-le", path)
        if even > 4 * odd and even > half // 20:
            return _checked(head, "utf-16-be", path)
        raise FormatError(path, "binary file (NUL bytes): not a text export")
    for enc in ("utf-8", "cp949"):
        try:
            text = codecs.getincrementaldecoder(enc)().decode(head, final=complete)
        except UnicodeDecodeError:
            continue
        _check_text(text, path)
        return enc
    if nul or len(_CONTROL.findall(head.decode("latin-1"))) > len(head) // 100:
        raise FormatError(path, "binary file: not a text export")
    raise FormatError(path, "undecodable: not UTF-8, UTF-16 or CP949/EUC-KR text "
                            "(re-save the export as UTF-8)")


def _checked(head: bytes, enc: str, path) -> str:
    _check_text(head[: len(head) & ~1].decode(enc, errors="replace"), path)
    return enc


def _check_text(text: str, path) -> None:
    if len(_CONTROL.findall(text)) > max(2, len(text) // 100):
        raise FormatError(path, "binary file (control characters): not a text export")


def open_text(path) -> tuple[io.TextIOWrapper, str]:
    """Open ``path`` as decoded text (universal newlines). Raises FormatError for empty,
    binary or undecodable files."""
    head = read_head(path)
    if not head.strip(b" \t\r\n\x00\xef\xbb\xbf\xff\xfe"):
        raise FormatError(path, "empty file")
    enc = sniff_encoding(head, path, complete=len(head) < SNIFF_BYTES)
    raw = _open_binary(path)
    return io.TextIOWrapper(raw, encoding=enc, errors="dialogbert-mark", newline=None), enc


def iter_lines(f: IO[str], encoding: str = "") -> Iterator[tuple[int, str | BadLine]]:
    """(1-based line number, line without its newline), or a BadLine for a line that is too
    long or held undecodable bytes (that line is skipped). A corrupt gzip stream ends the
    iteration with a BadLine instead of an exception. Reads fixed-size chunks and splits them
    (much faster than readline), so at most CHUNK + MAX_LINE characters are held."""
    lineno = 0
    for batch in iter_line_batches(f, encoding):
        for line in batch:
            lineno += 1
            yield lineno, line


def iter_line_batches(f: IO[str], encoding: str = "") -> Iterator[list[str | BadLine]]:
    """iter_lines in lists, one per chunk read: the k-th item over all lists is line k (every
    line is one item, a BadLine included). Readers on the hot path count the lines themselves
    and save a generator step and a tuple per line."""
    read = f.read
    lineno = 0
    carry = ""
    long_line: tuple[int, str] | None = None       # (line, preview) of a line being skipped
    try:
        while True:
            chunk = read(CHUNK)
            if not chunk:
                break
            parts = chunk.split("\n")
            out: list = []
            if long_line is not None:
                if len(parts) == 1:
                    continue                             # still inside the long line
                lineno += 1
                out.append(BadLine(lineno, f"line longer than {MAX_LINE:,} characters; skipped", long_line[1]))
                long_line = None
                del parts[0]
            elif carry:
                parts[0] = carry + parts[0]
            carry = parts.pop()
            if len(carry) > MAX_LINE:
                long_line, carry = (lineno + len(parts) + 1, carry[:80]), ""
            if parts and len(parts[0]) > MAX_LINE:
                lineno += 1
                out.append(BadLine(lineno, f"line longer than {MAX_LINE:,} characters; skipped", parts[0][:80]))
                del parts[0]
            if _MARK in chunk:
                for line in parts:
                    lineno += 1
                    if _MARK in line:
                        out.append(BadLine(lineno, f"bytes that are not valid {encoding or 'text'}; line skipped",
                                           line.replace(_MARK, "\ufffd")[:80]))
                    else:
                        out.append(line)
            else:
                lineno += len(parts)
                if out:
                    out.extend(parts)
                else:
                    out = parts
            if out:
                yield out
        err = getattr(getattr(f, "buffer", None), "error", None)
        if err is not None:
            raise err
        if long_line is not None:
            lineno += 1
            yield [BadLine(lineno, f"line longer than {MAX_LINE:,} characters; skipped", long_line[1])]
        elif carry:
            lineno += 1
            if _MARK in carry:
                yield [BadLine(lineno, f"bytes that are not valid {encoding or 'text'}; line skipped",
                               carry.replace(_MARK, "\ufffd")[:80])]
            else:
                yield [carry]
    except _READ_ERRORS as e:
        yield [BadLine(lineno + 1, f"the file ends early or is corrupt ({e})", "")]
