"""The recv pipe: a ring buffer that turns many small reads into one big one.

Semantics of SPDK's ``spdk_pipe``: the writer (the kernel, through ``readv``)
fills free space, the reader (the application) consumes readable bytes. The
whole capacity is usable: a separate *full* flag tells a full ring from an
empty one when the two indices meet, and both indices go back to 0 whenever
the ring is emptied, so the next fill gets one contiguous piece. Every
``get_buffer`` call hands out at most two memoryviews (the piece up to the
end of the buffer and the piece wrapped to its start) over one buffer
allocated once; nothing is allocated per read except those views.

When the compiled core is built, ``netimpl.Pipe`` is its C twin of this
class (``netimpl._native.Pipe``, same contract; the sockets' compiled
receive path reads and fills it without a Python call); this class stays
the reference, run by the tests with ``NETIMPL_NATIVE=0``.

The buffer is an anonymous mapping, not a bytearray: the kernel hands out
zero pages only as data first lands in them, so a thousand sockets with
2 MiB pipes cost what they hold, not 2 GB of page faults at accept time
(a bytearray of 2 MiB took ~5 ms to zero-fill here).
"""

from __future__ import annotations

import mmap
from typing import Callable

from .accel import native

__all__ = ["Pipe"]


class Pipe:
    """A fixed-capacity byte ring; see the module docstring."""

    __slots__ = ("_buf", "_mv", "_whole", "_size", "_read", "_write", "_full")

    def __init__(self, capacity: int) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int):
            raise TypeError(f"Pipe capacity must be an int, not {capacity!r}")
        if capacity <= 0:
            raise ValueError(f"Pipe capacity must be positive, not {capacity!r}")
        self._buf = mmap.mmap(-1, capacity)
        self._mv = memoryview(self._buf)
        self._whole = [self._mv]  # the free space of an empty pipe, handed to readv as is
        self._size = capacity
        self._read = 0
        self._write = 0
        self._full = False

    def __repr__(self) -> str:
        return f"<Pipe capacity={self._size} readable={self.bytes_available()} read={self._read} write={self._write}>"

    @property
    def capacity(self) -> int:
        """The pipe's size in bytes."""
        return self._size

    # -- writer side -------------------------------------------------------

    def free_space(self) -> int:
        """Bytes that can be written now."""
        return self._size - self.bytes_available()

    def writer_get_buffer(self, n: int) -> list[memoryview]:
        """Views totalling ``min(n, free_space())`` bytes where a writer may put data."""
        read, write, size = self._read, self._write, self._size
        if self._full or n <= 0:
            return []
        mv = self._mv
        if read <= write:
            first = min(n, size - write)
            views = [mv[write:write + first]]
            rest = min(n - first, read)
            if rest > 0:
                views.append(mv[0:rest])
            return views
        return [mv[write:write + min(n, read - write)]]

    def writer_advance(self, n: int) -> None:
        """Commit ``n`` bytes written into the views from :meth:`writer_get_buffer`."""
        if n < 0 or n > self.free_space():
            raise ValueError(f"writer_advance({n!r}): only {self.free_space()} bytes free")
        if n == 0:
            return
        self._write = (self._write + n) % self._size
        if self._write == self._read:
            self._full = True

    # -- reader side -------------------------------------------------------

    def bytes_available(self) -> int:
        """Bytes that can be read now."""
        if self._full:
            return self._size
        d = self._write - self._read
        return d if d >= 0 else d + self._size

    def reader_get_buffer(self, n: int) -> list[memoryview]:
        """Views totalling ``min(n, bytes_available())`` readable bytes, oldest first."""
        read, write = self._read, self._write
        if n <= 0 or (read == write and not self._full):
            return []
        mv = self._mv
        if read < write:
            return [mv[read:read + min(n, write - read)]]
        first = min(n, self._size - read)
        views = [mv[read:read + first]]
        rest = min(n - first, write)
        if rest > 0:
            views.append(mv[0:rest])
        return views

    def reader_advance(self, n: int) -> None:
        """Consume ``n`` readable bytes."""
        if n < 0 or n > self.bytes_available():
            raise ValueError(f"reader_advance({n!r}): only {self.bytes_available()} bytes readable")
        if n == 0:
            return
        read = (self._read + n) % self._size
        self._full = False
        if read == self._write:
            # Emptied: start again at 0 so the next fill is one piece.
            read = self._write = 0
        self._read = read

    # -- bulk helpers used by the sock layer ------------------------------

    def read_into(self, buf) -> int:
        """Copy up to ``len(buf)`` readable bytes into ``buf`` (a writable byte buffer) and consume them."""
        read, write = self._read, self._write
        if read < write:  # one piece: no views list
            k = min(len(buf), write - read)
            buf[:k] = self._mv[read:read + k]
            read += k
            if read == write:
                self._read = self._write = 0
            else:
                self._read = read
            return k
        want = len(buf)
        got = 0
        for view in self.reader_get_buffer(want):
            k = len(view)
            buf[got:got + k] = view
            got += k
        if got:
            self.reader_advance(got)
        return got

    def fill(self, readv: Callable[[list[memoryview]], int | None]) -> int | None:
        """Fill all free space with one ``readv`` call; returns what it returned."""
        if self._read == self._write == 0 and not self._full:
            views = self._whole
        else:
            views = self.writer_get_buffer(self._size)
            if not views:
                return 0
        n = readv(views)
        if n:
            self.writer_advance(n)
        return n

    def resized(self, capacity: int) -> "Pipe":
        """A new pipe of ``capacity`` holding a copy of this pipe's unread bytes; this one is unchanged."""
        have = self.bytes_available()
        if capacity < have:
            raise ValueError(f"cannot resize the recv pipe to {capacity} bytes: {have} bytes are buffered")
        new = Pipe(capacity)
        off = 0
        for view in self.reader_get_buffer(have):
            new._mv[off:off + len(view)] = view
            off += len(view)
        new.writer_advance(off)
        return new


PyPipe = Pipe
if native is not None:
    Pipe = native.Pipe  # type: ignore[misc]
