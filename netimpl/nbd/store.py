"""Backing stores: the bytes an export reads and writes.

- :class:`MemoryStore`: one shared anonymous mapping, allocated as it is
  written. A read reply is a slice of it, sent as it is (no copy in
  Python, none in the kernel when zero-copy is in force), and a write
  payload is received straight into it.
- :class:`FileStore`: a file through the page cache, with ``preadv`` into
  pooled buffers (back to the pool when the reply's request completes)
  and ``pwritev``: system calls, so a full disk or a shrunk file is an
  error reply rather than a SIGBUS.
- :class:`DirectFileStore`: the same with ``O_DIRECT`` and page-aligned
  bounce buffers.

Why sending from the live store is safe: a client can only order a write
after a read by waiting for the read's reply, and the reply has reached it
by then (bytes the client has received are never sent again), so a later
write cannot change what that reply carries. Two requests in flight at
once have no order in NBD either way.

Trimming frees rather than writes: ``madvise(MADV_REMOVE)`` for the whole
pages of the memory store, ``fallocate(FALLOC_FL_PUNCH_HOLE)`` for files
(``FALLOC_FL_ZERO_RANGE`` to zero without a hole), so a trimmed gigabyte
costs no writes.

Allocation (``base:allocation``, :meth:`Store.extents`): a file is asked
(``SEEK_DATA``/``SEEK_HOLE``; where the file system cannot answer, all of
it is data). The memory store keeps one state byte per page (4 KiB): a
hole (never written, or trimmed: reads as zeroes), data, or zeroes written
without a hole (``NBD_CMD_FLAG_NO_HOLE``). The map is a shared anonymous
mapping like the store's, so forked workers see one map, and it is 1/4096
of the export's size at most (256 KiB per GiB), its pages allocated as they
are touched. A write marks its pages (a partly written page is data); a
query walks the map's runs in C (``re`` over the mapping), so it costs one
Python step per extent and a scan of a byte per page of the range asked.
A read of 64 KiB or more that holds no data page is sent from a read-only
mapping of zeroes, so reading a sparse export whole (a copy without block
status) does not allocate its holes.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import mmap
import os
import re
import stat
from typing import Any

from .protocol import MAX_BLOCK_SIZE

logger = logging.getLogger("netimpl.nbd")

__all__ = ["Store", "MemoryStore", "FileStore", "DirectFileStore", "open_file_store", "parse_size"]

PAGE = mmap.PAGESIZE
MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000)   # Linux: no swap reserved for a sparse export
_ZERO_CHUNK = memoryview(bytes(1 << 20))
#: base:allocation's extent flags (NBD_STATE_HOLE, NBD_STATE_ZERO), as protocol.py names them
STATE_HOLE = 1
STATE_ZERO = 2

_SIZE = re.compile(r"^\s*(\d+)\s*([kmgtp]?)(i?b)?\s*$", re.IGNORECASE)
_UNITS = {"": 0, "k": 10, "m": 20, "g": 30, "t": 40, "p": 50}


def parse_size(text: str) -> int:
    """``"1G"``, ``"512MiB"``, ``"4096"`` → bytes (binary units); ``ValueError`` naming the text otherwise."""
    if not isinstance(text, str):
        raise TypeError(f"size must be a string like '1G', not {text!r}")
    m = _SIZE.match(text)
    if not m:
        raise ValueError(f"size {text!r} is not a number of bytes with an optional K/M/G/T/P suffix")
    return int(m.group(1)) << _UNITS[m.group(2).lower()]


class Store:
    """The bytes behind one export.

    ``read_view`` is the whole export as a memoryview when reads can be
    served straight from a mapping, and ``write_view`` likewise for writes
    (bytes written there are the export's once :meth:`commit` is called for
    them: the memory store learns its allocation there); otherwise the
    methods below lend out bounce buffers. Offsets and lengths are checked
    by the caller.
    """

    kind = "store"
    read_view: memoryview | None = None
    write_view: memoryview | None = None

    def __init__(self, size: int, read_only: bool) -> None:
        self.size = size
        self.read_only = read_only

    def describe(self) -> str:
        """One line for the startup banner and ``NBD_OPT_LIST``."""
        return f"{self.kind} {_human(self.size)}{', read-only' if self.read_only else ''}"

    def read(self, offset: int, length: int) -> tuple[Any, Any]:
        """``(buffer, token)``: the bytes to send, and what to :meth:`release` once sent (or None)."""
        assert self.read_view is not None
        return self.read_view[offset:offset + length], None

    def release(self, token: Any) -> None:
        """Take back a buffer that :meth:`read` or :meth:`write_target` lent out."""

    def write(self, offset: int, data: memoryview, fua: bool) -> None:
        """Write ``data`` that is already in hand (durable before returning when ``fua``)."""
        view, token = self.write_target(offset, len(data))
        view[:] = data
        self.commit(offset, len(data), token, fua)

    def write_target(self, offset: int, length: int) -> tuple[memoryview, Any]:
        """``(view, token)``: where a write payload of ``length`` bytes should be received."""
        assert self.write_view is not None
        return self.write_view[offset:offset + length], None

    def commit(self, offset: int, length: int, token: Any, fua: bool) -> None:
        """The payload is in the write target: make it the export's (durable first when ``fua``)."""

    def discard(self, token: Any) -> None:
        """The payload for a :meth:`write_target` never arrived in full: take its buffer back unwritten."""

    def flush(self) -> None:
        """Make every completed write durable."""

    def cache(self, offset: int, length: int) -> None:
        """The client will read this range soon (NBD_CMD_CACHE): a hint, which may do nothing."""

    def extents(self, offset: int, length: int, limit: int) -> list[tuple[int, int]]:
        """``[(length, flags), ...]``: consecutive extents from ``offset``, at least one and at most
        ``limit``, none empty, together never past ``offset + length``; ``flags`` are
        :data:`STATE_HOLE` and :data:`STATE_ZERO`. This default knows nothing: all data."""
        return [(length, 0)]

    def zero_view(self, offset: int, length: int) -> memoryview | None:
        """A read-only view of ``length`` zeroes to send instead of ``read_view``'s bytes when the store
        knows the range reads as zeroes without looking at it; None otherwise (this default)."""
        return None

    def trim(self, offset: int, length: int) -> None:
        """The client no longer needs these bytes; they read back as zeroes here."""
        self.zero(offset, length, may_trim=True)

    def zero(self, offset: int, length: int, may_trim: bool, fast: bool = False) -> None:
        """Zero a range; ``may_trim`` allows freeing it rather than writing zeroes.

        ``fast`` (NBD_CMD_FLAG_FAST_ZERO): raise ``OSError(ENOTSUP)`` at once, having changed
        nothing, unless zeroing is quicker than writing the zeroes would be.
        """
        if fast:
            raise OSError(errno.ENOTSUP, f"{self.kind} store would write zeroes")
        pos, end = offset, offset + length
        while pos < end:
            n = min(end - pos, len(_ZERO_CHUNK))
            self.write(pos, _ZERO_CHUNK[:n], fua=False)
            pos += n

    def close(self) -> None:
        """Flush and release the store; idempotent."""


def _human(n: int) -> str:
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << (shift - 10)) == 0:
            return f"{n / (1 << shift):g} {unit}"
    return f"{n} B"


class _BouncePool:
    """Page-aligned buffers (anonymous mappings) kept by size for reuse, at most :data:`KEEP_BYTES` in all.

    A reused buffer has its pages already faulted in; past the bound a
    returned buffer is dropped, and unmapped when the last view of it (a
    sent reply's) goes, so what a burst of large reads mapped does not stay
    mapped.
    """

    KEEP_BYTES = 16 << 20

    def __init__(self) -> None:
        self._free: dict[int, list[mmap.mmap]] = {}
        self.kept = 0           # bytes in the pool

    def get(self, length: int) -> mmap.mmap:
        size = max(PAGE, -(-length // PAGE) * PAGE)
        free = self._free.get(size)
        if free:
            self.kept -= size
            return free.pop()
        return mmap.mmap(-1, size)

    def put(self, buf: mmap.mmap) -> None:
        size = len(buf)
        if self.kept + size <= self.KEEP_BYTES:
            self._free.setdefault(size, []).append(buf)
            self.kept += size

    def close(self) -> None:
        for free in self._free.values():
            for buf in free:
                try:
                    buf.close()
                except BufferError:      # a view of it is still alive: unmapped with the last one
                    pass
        self._free.clear()
        self.kept = 0


def _punch(mm: mmap.mmap, offset: int, end: int) -> tuple[int, int] | None:
    """Free the whole pages of ``[offset, end)`` with MADV_REMOVE; the page range, or None if refused."""
    first = -(-offset // PAGE) * PAGE
    last = end // PAGE * PAGE
    if last <= first:
        return None
    try:
        mm.madvise(mmap.MADV_REMOVE, first, last - first)
    except OSError as exc:        # a file system without hole punching: the caller writes zeroes
        logger.debug("MADV_REMOVE refused (%s); writing zeroes", exc)
        return None
    return first, last


# the memory store's page states, and the runs of them a query walks
_HOLE, _DATA, _ZEROED = 0, 1, 2
_DATA_RUN = memoryview(bytes([_DATA]) * (MAX_BLOCK_SIZE // PAGE + 1))   # a write's pages, the largest's too
_RUNS = re.compile(rb"(\x00+)|(\x01+)|(\x02+)")
_RUN_FLAGS = (0, STATE_HOLE | STATE_ZERO, 0, STATE_ZERO)      # by the run's group: hole, data, zeroes


_DATA_BYTE = bytes([_DATA])
_ZEROES: list[memoryview] = []


def _zeroes() -> memoryview:
    """The largest read's worth of zeroes: a private anonymous mapping never written, so its pages
    are all the kernel's one zero page, and read-only, so nothing can write them."""
    if not _ZEROES:
        _ZEROES.append(memoryview(mmap.mmap(-1, MAX_BLOCK_SIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
                                            prot=mmap.PROT_READ)))
    return _ZEROES[0]


def _fill(st: mmap.mmap, first: int, last: int, state: int) -> None:
    """Set the states of pages ``[first, last)``."""
    run = bytes([state]) * min(last - first, 1 << 16)
    for pos in range(first, last, len(run)):
        st[pos:min(last, pos + len(run))] = run[:min(last, pos + len(run)) - pos]


def _zero_view(view: memoryview | None, start: int, end: int) -> None:
    assert view is not None
    for pos in range(start, end, len(_ZERO_CHUNK)):
        n = min(end - pos, len(_ZERO_CHUNK))
        view[pos:pos + n] = _ZERO_CHUNK[:n]


class MemoryStore(Store):
    """An export in memory, zero-filled and allocated as it is written (``--size``)."""

    kind = "memory"

    def __init__(self, size: int, read_only: bool = False) -> None:
        if isinstance(size, bool) or not isinstance(size, int):
            raise TypeError(f"memory store size must be an int, not {size!r}")
        if size <= 0:
            raise ValueError(f"memory store size must be positive, not {size}")
        super().__init__(size, read_only)
        flags = mmap.MAP_SHARED | mmap.MAP_ANONYMOUS | MAP_NORESERVE
        self._mmap: mmap.mmap | None = mmap.mmap(-1, size, flags=flags)
        self._state = mmap.mmap(-1, -(-size // PAGE), flags=flags)     # a byte per page, all _HOLE
        self._marks = memoryview(self._state)
        self.read_view = self.write_view = memoryview(self._mmap)

    def commit(self, offset: int, length: int, token: Any, fua: bool) -> None:
        # once per write, on the request path: kept to a few hundred nanoseconds
        first = offset // PAGE
        n = -(-(offset + length) // PAGE) - first
        if n == 1:
            self._marks[first] = _DATA
        elif n <= len(_DATA_RUN):
            self._marks[first:first + n] = _DATA_RUN[:n]
        else:
            _fill(self._state, first, first + n, _DATA)

    def zero_view(self, offset: int, length: int) -> memoryview | None:
        if self._state.find(_DATA_BYTE, offset // PAGE, -(-(offset + length) // PAGE)) >= 0:
            return None
        return _zeroes()[:length]

    def extents(self, offset: int, length: int, limit: int) -> list[tuple[int, int]]:
        end = offset + length
        out = []
        pos = offset
        for run in _RUNS.finditer(self._state, offset // PAGE, -(-end // PAGE)):
            stop = min(run.end() * PAGE, end)
            out.append((stop - pos, _RUN_FLAGS[run.lastindex or 0]))
            pos = stop
            if len(out) == limit:
                break
        return out

    def zero(self, offset: int, length: int, may_trim: bool, fast: bool = False) -> None:
        # Always quick (no I/O): whole pages are punched, or zeroed in memory, never sent.
        end = offset + length
        first = -(-offset // PAGE)
        last = end // PAGE if end < self.size else -(-end // PAGE)     # the export's partial last page
        if first >= last:
            self._zero_part(offset, end, may_trim)
            return
        assert self._mmap is not None
        if may_trim and _punch(self._mmap, first * PAGE, last * PAGE) is not None:
            _fill(self._state, first, last, _HOLE)
        else:
            _zero_view(self.write_view, first * PAGE, min(last * PAGE, self.size))
            _fill(self._state, first, last, _ZEROED)
        self._zero_part(offset, first * PAGE, may_trim)
        self._zero_part(last * PAGE, end, may_trim)

    def _zero_part(self, start: int, end: int, may_trim: bool) -> None:
        """Zero ``[start, end)``, which covers no page whole: only data pages need zeroes written,
        and hole pages too when the zeroes must be allocated (not ``may_trim``)."""
        st = self._state
        for page in range(start // PAGE, -(-end // PAGE)):
            state = st[page]
            if state == _DATA or not may_trim:
                _zero_view(self.write_view, max(start, page * PAGE), min(end, page * PAGE + PAGE))
                if state == _HOLE:
                    st[page] = _ZEROED

    def close(self) -> None:
        mm, self._mmap = self._mmap, None
        if mm is None:
            return
        self._marks.release()
        self._state.close()
        for view in (self.read_view, self.write_view):
            if view is not None:
                view.release()
        self.read_view = self.write_view = None
        try:
            mm.close()
        except BufferError:       # a reply still holds a slice: the mapping goes with the last one
            logger.debug("memory store still exported at close; left to the collector")


class FileStore(Store):
    """An export backed by a regular file or block device, through the page cache.

    Reads ``preadv`` into pooled buffers and writes ``pwritev`` straight
    from the received payload. Not a mapping: a page fault on a file that
    shrank, or on a full tmpfs, is a SIGBUS that would take the server
    down, where a system call is an error reply to one request.
    """

    kind = "file"
    ALIGN = 1
    OPEN_FLAGS = 0

    def __init__(self, path: str, read_only: bool = False) -> None:
        self.path = path
        fd = _open(path, (os.O_RDONLY if read_only else os.O_RDWR) | self.OPEN_FLAGS)
        try:
            size = _fd_size(fd, path)
            if size % self.ALIGN:
                raise ValueError(f"export file {path!r} is {size} bytes; {self.kind} needs a multiple "
                                 f"of {self.ALIGN}")
        except BaseException:
            os.close(fd)
            raise
        super().__init__(size, read_only)
        self._fd = fd
        self._blockdev = stat.S_ISBLK(os.fstat(fd).st_mode)
        self._bounce = _BouncePool()
        self._refused: set[int] = set()     # fallocate modes the file system does not do
        self._seeks_holes = True            # SEEK_DATA/SEEK_HOLE answered (until refused)

    def describe(self) -> str:
        return f"{self.path} ({super().describe()})"

    def _cover(self, offset: int, length: int) -> tuple[int, int]:
        """The aligned range around ``[offset, offset + length)``."""
        a = self.ALIGN
        return offset // a * a, -(-(offset + length) // a) * a

    def _pread(self, buf: mmap.mmap, at: int, start: int, end: int) -> None:
        view = memoryview(buf)[at:at + end - start]
        try:
            got = os.preadv(self._fd, [view], start)
        finally:
            view.release()
        if got != end - start:
            raise OSError(errno.EIO, f"short read from {self.path} at {start}: {got} of {end - start} bytes")

    def _pwrite(self, data: memoryview, offset: int, fua: bool) -> None:
        done = os.pwritev(self._fd, [data], offset, os.RWF_DSYNC if fua else 0)
        if done != len(data):
            raise OSError(errno.ENOSPC, f"short write to {self.path} at {offset}: {done} of {len(data)} bytes")

    def read(self, offset: int, length: int) -> tuple[Any, Any]:
        start, end = self._cover(offset, length)
        buf = self._bounce.get(end - start)
        try:
            self._pread(buf, 0, start, end)
        except BaseException:
            self._bounce.put(buf)
            raise
        return memoryview(buf)[offset - start:offset - start + length], buf

    def release(self, token: Any) -> None:
        self._bounce.put(token)

    def write(self, offset: int, data: memoryview, fua: bool) -> None:
        self._pwrite(data, offset, fua)

    def write_target(self, offset: int, length: int) -> tuple[memoryview, Any]:
        start, end = self._cover(offset, length)
        buf = self._bounce.get(end - start)
        a, tail = self.ALIGN, offset + length
        try:
            if offset != start:                       # read-modify-write the partial first block
                self._pread(buf, 0, start, start + a)
            if tail % a:                              # ... and the partial last one
                last = tail // a * a
                if not (offset != start and last == start):
                    self._pread(buf, last - start, last, last + a)
        except BaseException:
            self._bounce.put(buf)
            raise
        return memoryview(buf)[offset - start:tail - start], (buf, start, end)

    def discard(self, token: Any) -> None:
        self._bounce.put(token[0])

    def commit(self, offset: int, length: int, token: Any, fua: bool) -> None:
        buf, start, end = token
        view = memoryview(buf)[:end - start]
        try:
            self._pwrite(view, start, fua)
        finally:
            view.release()
            self._bounce.put(buf)

    def flush(self) -> None:
        if not self.read_only:
            os.fdatasync(self._fd)

    def cache(self, offset: int, length: int) -> None:
        os.posix_fadvise(self._fd, offset, length, os.POSIX_FADV_WILLNEED)    # read-ahead, not waited for

    def _seek(self, pos: int, whence: int) -> int:
        """lseek(2) on the file: the seam a test replaces to play a file system without SEEK_HOLE."""
        return os.lseek(self._fd, pos, whence)

    def extents(self, offset: int, length: int, limit: int) -> list[tuple[int, int]]:
        # The file offset lseek moves is never used: reads and writes are pread/pwrite.
        end = offset + length
        out: list[tuple[int, int]] = []
        pos = offset
        while pos < end and len(out) < limit and self._seeks_holes:
            try:
                data = self._seek(pos, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:          # no data from pos to the end of the file
                    data = end
                elif exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                    logger.info("%s: SEEK_DATA refused (%s); reporting all of it as data", self.path, exc)
                    self._seeks_holes = False
                    break
                else:
                    raise
            if data > pos:
                stop, flags = min(data, end), STATE_HOLE | STATE_ZERO
            else:
                stop, flags = min(self._seek(pos, os.SEEK_HOLE), end), 0
            out.append((stop - pos, flags))
            pos = stop
        if pos < end and len(out) < limit:
            out.append((end - pos, 0))
        return out

    def zero(self, offset: int, length: int, may_trim: bool, fast: bool = False) -> None:
        mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE if may_trim else FALLOC_FL_ZERO_RANGE
        # A block device's ZERO_RANGE may write the zeroes itself (its PUNCH_HOLE never does): not fast.
        if mode not in self._refused and length and not (fast and self._blockdev and not may_trim):
            try:
                _fallocate(self._fd, mode, offset, length)
                return
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.ENOSYS):
                    raise
                logger.debug("%s: fallocate(%#x) refused (%s); writing zeroes", self.path, mode, exc)
                self._refused.add(mode)
        if fast and length:
            raise OSError(errno.ENOTSUP, f"{self.path}: the file system cannot zero without writing")
        super().zero(offset, length, may_trim)

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd < 0:
            return
        try:
            if not self.read_only:
                os.fdatasync(fd)
        finally:
            os.close(fd)
            self._bounce.close()


class DirectFileStore(FileStore):
    """A file export opened ``O_DIRECT``: no page cache, page-aligned bounce buffers.

    Unaligned requests read (and for writes, read, modify and write back)
    the aligned blocks around them; the file's size must be a multiple of
    the alignment.
    """

    kind = "file, O_DIRECT"
    ALIGN = 4096
    OPEN_FLAGS = os.O_DIRECT

    write = Store.write          # data in hand still goes through an aligned bounce buffer

    def cache(self, offset: int, length: int) -> None:
        """Nothing: there is no page cache to read ahead into."""


_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10


def _fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """fallocate(2) with a mode, which ``os.posix_fallocate`` does not take."""
    if _libc.fallocate(fd, mode, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _open(path: str, flags: int) -> int:
    try:
        return os.open(path, flags | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.EINVAL and flags & os.O_DIRECT:
            raise OSError(exc.errno, f"{path}: this file system refuses O_DIRECT") from None
        raise OSError(exc.errno, f"cannot open export file {path}: {exc.strerror}") from None


def _fd_size(fd: int, path: str) -> int:
    st = os.fstat(fd)
    if stat.S_ISREG(st.st_mode):
        return st.st_size
    if stat.S_ISBLK(st.st_mode):
        return os.lseek(fd, 0, os.SEEK_END)
    raise ValueError(f"export file {path!r} is neither a regular file nor a block device")


def open_file_store(path: str, read_only: bool = False, direct: bool = False) -> Store:
    """A file export: through the page cache, or ``O_DIRECT`` when ``direct``."""
    return DirectFileStore(path, read_only) if direct else FileStore(path, read_only)
