"""The shard files cut into line-aligned byte chunks, each read a block at a time, so that
PretrainStream.conversations can draw from the whole corpus at once while holding only a small
read-ahead. Apart from the stream (dialogbert.data): it knows lines and bytes, not conversations."""
from __future__ import annotations

import os

MAX_READERS = 64                # chunks of the corpus read in parallel by PretrainStream.conversations
MIN_CHUNK_BYTES = 1024          # ... each at least this big (small corpora get fewer chunks)
READ_AHEAD_BYTES = 32 * 1024    # bytes of lines a chunk reader holds at a time


class _ChunkReader:
    """The lines that START in bytes [start, end) of a file, read a block at a time (the file is
    opened per block, so any number of readers hold no file handles)."""

    def __init__(self, path, start: int, end: int):
        self.path, self.start, self.pos, self.end = path, start, start, end
        self.lines: list[bytes] = []
        self.lineno = 0  # line numbers are chunk-relative (only for error messages)
        if start > 0:  # the line that straddles `start` belongs to the previous chunk
            with open(path, "rb") as f:
                f.seek(start - 1)
                f.readline()
                self.pos = f.tell()

        self.bytes_read = self.lines_read = 0
        self._fill()

    def _fill(self) -> None:
        if self.pos >= self.end:
            return
        with open(self.path, "rb") as f:
            f.seek(self.pos)
            read = 0
            while self.pos < self.end and read < READ_AHEAD_BYTES:
                line = f.readline()
                if not line:
                    self.pos = self.end
                    break
                self.lines.append(line)
                self.pos += len(line)
                read += len(line)
                self.bytes_read += len(line)
                self.lines_read += 1
        self.lines.reverse()

    @property
    def left(self) -> float:
        """Lines left (estimated from the mean line length so far): drawing readers by this
        makes every chunk run out at the same pace, whatever its line lengths."""
        mean = self.bytes_read / max(1, self.lines_read)
        return len(self.lines) + max(0, self.end - self.pos) / max(1.0, mean) + 1e-3

    def next_line(self):
        if not self.lines:
            self._fill()
            if not self.lines:
                return None
        self.lineno += 1
        return f"{self.path} (chunk at byte {self.start})", self.lineno, self.lines.pop()


def chunk_readers(files) -> list[_ChunkReader]:
    sizes = [os.path.getsize(p) for p in files]
    chunk = max(MIN_CHUNK_BYTES, -(-sum(sizes) // MAX_READERS))
    readers = []
    for path, size in zip(files, sizes):
        for start in range(0, size, chunk):
            readers.append(_ChunkReader(path, start, min(size, start + chunk)))
    return readers
