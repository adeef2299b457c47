"""The pure-Python reference of the request life cycle, twin of ``netimpl/_native.c``.

Two implementations of one contract, as CPython keeps ``Lib/heapq.py``
beside ``Modules/_heapqmodule.c``: the compiled one runs when it was built
(:mod:`netimpl.accel` chooses), this one otherwise, and the unit,
conformance and posix suites run against both (``NETIMPL_NATIVE=0`` forces
this one). The compiled core also calls back into a few functions here for
its slow paths (:func:`SockCore.recv_into` when the fast read does not
apply, :func:`_as_buffer` for unusual buffer types), so those exist once.

:class:`SockCore` is the base of :class:`netimpl.sock.Sock`: it owns the
per-socket request queues and the per-request work; ``Sock`` adds the
rest of the generic layer (close protocol, buffer sizes, ``writev``).

Facts that shape it:

* Requests complete in the order they were queued. A request is *pending*
  once all its bytes are in the kernel; on a zero-copy socket it completes
  only when the kernel has released every chunk of it (``_zc_wait`` falls to
  0), which may be long after a later request was fully sent.
* While callbacks run on a socket (``_cb_cnt`` > 0) flushing it is deferred
  and a ``close`` only marks it closed (``_close_deferred``): the backend's
  close runs when the last callback returns.
* Exceptions from callbacks are recorded (:mod:`netimpl.errors`) and raised
  by the public call once the queues are consistent again.
"""

from __future__ import annotations

import errno
from collections import OrderedDict, deque
from threading import get_ident
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

from .errors import callback_errors, ebadf, logger, wrong_thread

if TYPE_CHECKING:
    from .impl import GroupImpl

__all__ = ["Request", "SockCore", "GroupCore", "GroupImplCore", "PosixGroupState", "completions", "flush_dirty", "IOV_BATCH_SIZE", "MIN_SOCK_PIPE_SIZE"]

#: Most iovecs gathered into one send, and the queue depth that flushes at once.
IOV_BATCH_SIZE = 64
#: reads of at least this many bytes bypass an empty recv pipe (SPDK's MIN_SOCK_PIPE_SIZE)
MIN_SOCK_PIPE_SIZE = 1024

RequestCallback = Callable[["Request", int], Any]

# Request states
FREE = 0
QUEUED = 1
PENDING = 2

_PLAIN = (bytes, bytearray)
_PLAIN_TYPES = frozenset(_PLAIN)
_COMPLETIONS = [0]


def completions() -> int:
    """Requests completed in this process; a group poll that sees it move does not sleep."""
    return _COMPLETIONS[0]


def _as_buffer(buf: Any, i: int) -> Any:
    """``buf`` as something ``sendmsg`` takes whose ``len`` is its byte count."""
    if type(buf) in _PLAIN:
        return buf
    try:
        mv = memoryview(buf)
    except TypeError:
        raise TypeError(f"Request bufs[{i}] is not a bytes-like object: {buf!r:.60}") from None
    if not mv.c_contiguous:
        raise ValueError(f"Request bufs[{i}] is not a contiguous buffer")
    if mv.ndim != 1 or mv.itemsize != 1:
        mv = mv.cast("B")
    return mv


def _byte_view(buf: Any) -> memoryview:
    mv = memoryview(buf)
    if mv.readonly:
        raise TypeError("recv buffer is read-only")
    if mv.ndim != 1 or mv.itemsize != 1:
        mv = mv.cast("B")
    return mv


def _advance_cursor(req: "Request", n: int) -> None:
    """Move a partly sent request's send cursor ``n`` bytes on: each gather then starts at its first
    unsent buffer, so a request of many iovecs costs O(iovecs) to send, not O(iovecs² / 64)."""
    bufs = req._bufs
    i = req._iov_idx
    off = req._iov_off + n
    while i < len(bufs) and off >= len(bufs[i]):
        off -= len(bufs[i])
        i += 1
    req._iov_idx = i
    req._iov_off = off


class Request:
    """A vector of buffers to send asynchronously, and who to tell when it is done.

    ``cb(req, status)`` runs exactly once per queueing: ``status`` is 0 when
    every byte was handed to the kernel and the kernel no longer reads the
    buffers, else a positive errno (``ECANCELED`` on close, remove or abort;
    the socket's error such as ``ECONNRESET`` or ``EPIPE`` otherwise). The
    buffers must not change until then. A request may be queued again once
    its callback has run.
    """

    __slots__ = ("_bufs", "cb", "ctx", "_nbytes", "_offset", "_iov_idx", "_iov_off", "_zc_wait", "_status",
                 "_state")

    def __init__(self, bufs: Sequence[Any], cb: RequestCallback | None = None, ctx: Any = None) -> None:
        if cb is not None and not callable(cb):
            raise TypeError(f"Request cb must be callable or None, not {cb!r}")
        if getattr(self, "_state", FREE) != FREE:
            raise ValueError("cannot re-initialise a request that is in flight")
        self.cb = cb
        self.ctx = ctx
        self._state = FREE
        self._offset = 0
        self._iov_idx = self._iov_off = 0  # the send cursor: first buffer not sent whole, bytes of it sent
        self._zc_wait = 0
        self._status = 0
        self.bufs = bufs

    @property
    def bufs(self) -> list[Any]:
        """The buffers, as given (memoryviews of other buffer types are cast to bytes)."""
        return self._bufs

    @bufs.setter
    def bufs(self, bufs: Sequence[Any]) -> None:
        if self._state != FREE:
            raise ValueError("cannot change the buffers of a request that is in flight")
        if isinstance(bufs, (bytes, bytearray, memoryview, str)):
            raise TypeError("Request bufs must be a sequence of bytes-like objects, not a single buffer")
        try:
            items = list(bufs)
        except TypeError:
            raise TypeError(f"Request bufs must be a sequence of bytes-like objects, not {bufs!r:.60}") from None
        # The common case (bytes and bytearrays only) is checked and measured at C speed.
        if not _PLAIN_TYPES.issuperset(map(type, items)):
            # Byte memoryviews (slices of a store, say) pass as they are; anything else is checked and cast.
            items = [b if type(b) in _PLAIN or (type(b) is memoryview and b.format == "B" and b.ndim == 1
                                                and b.c_contiguous) else _as_buffer(b, i) for i, b in enumerate(items)]
        self._bufs = items
        self._nbytes = sum(map(len, items))

    @property
    def nbytes(self) -> int:
        """Total length of the buffers in bytes."""
        return self._nbytes

    @property
    def in_flight(self) -> bool:
        """True from ``writev_async`` until the callback has started."""
        return self._state != FREE

    def __repr__(self) -> str:
        state = ("free", "queued", "pending")[self._state]
        return f"<Request {state} nbytes={self._nbytes} sent={self._offset} zc_wait={self._zc_wait}>"


class SockCore:
    """The request queues of one socket and the per-request work; see the module docstring.

    The backend's ``_flush`` uses :meth:`_requests_sent`,
    :meth:`_complete_pending` and :meth:`_fail_queued`; :class:`Sock`
    provides ``_flush``, ``_read_into``, ``_recv``, ``_close_now`` and the
    attributes ``_closed``, ``_group_impl``, ``_pipe`` and ``stats``.
    """

    if TYPE_CHECKING:
        _queued: deque[Request]
        _pending: deque[Request]
        _queued_iovcnt: int
        _queued_bytes: int
        _cb_cnt: int
        _closed: bool
        _close_deferred: bool
        _group_impl: GroupImpl | None
        _group: Any
        _pipe: Any
        stats: Any

        def _flush(self) -> None: ...
        def _read_into(self, buf: bytearray) -> int | None: ...
        def _recv(self, views: list[Any]) -> int | None: ...
        def _close_now(self) -> None: ...

    def _init_queues(self) -> None:
        self._queued = deque()
        self._pending = deque()
        self._queued_iovcnt = 0
        self._queued_bytes = 0
        self._cb_cnt = 0
        self._closed = False
        self._close_deferred = False

    @property
    def queued_bytes(self) -> int:
        """Bytes of this socket's requests whose callbacks have not run yet.

        Queued, partly or wholly handed to the kernel, or waiting for a
        zero-copy release: a partly sent request counts whole. Inside a
        request's callback that request no longer counts. Readable after
        :meth:`close` (zero-copy requests still awaiting release count).
        The measure for backpressure: stop producing (for instance
        :meth:`SockGroup.pause_reading`) while it is above a bound.
        """
        return self._queued_bytes

    # -- receive ----------------------------------------------------------

    def recv_into(self, buf: Any) -> int | None:
        """Read into ``buf``: bytes read, 0 at EOF, ``None`` when nothing is readable now.

        Through the recv pipe where it is enabled (a read of at least 1 KiB
        with the pipe empty goes straight into ``buf``). Never blocks.

        Raises ``OSError`` when the kernel reports an error on the socket
        (``ConnectionResetError`` for a peer's reset, ``TimeoutError`` for
        ETIMEDOUT...), after every byte received before the error has been
        delivered; ``OSError(EBADF)`` once closed; ``TypeError`` for a
        read-only buffer. A group's read callback is called for an error as
        for data and EOF, so it must be ready to catch it.
        """
        if self._closed:
            raise ebadf()
        if type(buf) is bytearray and len(buf) >= MIN_SOCK_PIPE_SIZE:
            pipe = self._pipe
            if pipe is None or not pipe.bytes_available():
                # The common large read: no views, no pipe (see _recv).
                n = self._read_into(buf)
                if n:
                    self.stats.bytes_received += n
                return n
            return self._recv([buf])
        return self._recv([_byte_view(buf)])

    def readv(self, bufs: Iterable[Any]) -> int | None:
        """Read into several buffers in order; returns and raises as :meth:`recv_into`."""
        if self._closed:
            raise ebadf()
        return self._recv([_byte_view(b) for b in bufs])

    # -- send -------------------------------------------------------------

    def writev_async(self, req: Request) -> None:
        """Queue ``req``; sent at the next flush or group poll, or now when 64 iovecs are queued."""
        if self._closed:
            raise ebadf()
        if type(req) is not Request and not isinstance(req, Request):
            raise TypeError(f"writev_async takes a netimpl.Request, not {req!r:.60}")
        if req._state != FREE:
            raise ValueError(f"{req!r} is already queued")
        gi = self._group_impl
        if gi is not None and gi._owner and gi._owner != get_ident():
            raise wrong_thread(self, "writev_async")  # before anything changes: the call does nothing
        req._state = QUEUED
        req._offset = req._iov_idx = req._iov_off = 0
        req._zc_wait = 0
        req._status = 0
        queued = self._queued
        queued.append(req)
        self._queued_iovcnt += len(req._bufs)
        self._queued_bytes += req._nbytes
        if len(queued) == 1 and gi is not None:
            gi._dirty[self] = None  # type: ignore[index]
            group = self._group
            if group._wake_fd >= 0 and not group._polling:
                group._work_arrived()  # no kernel event will announce it
        if self._queued_iovcnt >= IOV_BATCH_SIZE and self._cb_cnt == 0:
            self._flush()
            if callback_errors.pending:
                callback_errors.reraise()

    def flush(self) -> None:
        """Hand queued requests to the kernel as far as it takes them now; never blocks.

        Send errors complete the requests with the errno instead of raising.
        Deferred (a no-op) while callbacks run on this socket.
        """
        if self._closed:
            raise ebadf()
        gi = self._group_impl
        if gi is not None and gi._owner:
            gi._check_thread(self, "flush")
        if self._cb_cnt == 0:
            self._flush()
        if callback_errors.pending:
            callback_errors.reraise()

    # -- request life cycle (used by backends) ----------------------------

    def _requests_sent(self, n: int, zerocopy: bool) -> list[Request] | None:
        """Account ``n`` bytes handed to the kernel from the head of the queue.

        Fully sent requests move to the pending list. With ``zerocopy``, every
        request that the send touched waits for one more kernel release; the
        list of them is returned so the backend can map its notification.
        """
        queued = self._queued
        pending = self._pending
        touched: list[Request] | None = [] if zerocopy else None
        while n > 0 and queued:
            req = queued[0]
            left = req._nbytes - req._offset
            if zerocopy:
                req._zc_wait += 1
                touched.append(req)  # type: ignore[union-attr]
            if n < left:
                req._offset += n
                _advance_cursor(req, n)
                break
            n -= left
            req._offset = req._nbytes
            queued.popleft()
            self._queued_iovcnt -= len(req._bufs)
            req._state = PENDING
            pending.append(req)
        # Zero-length requests at the head are sent as soon as they are reached.
        while queued and queued[0]._nbytes == 0:
            req = queued.popleft()
            self._queued_iovcnt -= len(req._bufs)
            req._state = PENDING
            pending.append(req)
        return touched

    def _complete_pending(self) -> None:
        """Run the callbacks of pending requests whose buffers are free, in queue order."""
        pending = self._pending
        if not pending or pending[0]._zc_wait:
            return
        self._cb_cnt += 1
        try:
            while pending and not pending[0]._zc_wait:
                self._complete(pending.popleft())
        finally:
            self._cb_cnt -= 1
        if self._cb_cnt == 0 and self._close_deferred:
            self._close_now()

    def _complete(self, req: Request) -> None:
        status = req._status
        req._state = FREE
        _COMPLETIONS[0] += 1
        self._queued_bytes -= req._nbytes
        if status:
            self.stats.requests_aborted += 1
        else:
            self.stats.requests_completed += 1
        cb = req.cb
        if cb is not None:
            try:
                cb(req, status)
            except BaseException as exc:  # noqa: BLE001 - re-raised by the public call
                callback_errors.record(exc)

    def _fail_queued(self, status: int) -> None:
        """Complete every queued request with ``status`` (an errno).

        A send error (``ECONNRESET``, ``EPIPE``...) fails them in queue
        order: behind the requests the kernel still holds by zero-copy, which
        complete first, on their release. ``ECANCELED`` (close, remove) does
        not wait for those: what the kernel never had completes now, as close
        promises, and only a request partly handed over by zero-copy still
        waits for its release (SPDK's abort order).
        """
        queued = self._queued
        if not queued:
            return
        failed = list(queued)
        queued.clear()
        self._queued_iovcnt = 0
        gi = self._group_impl
        if gi is not None:
            gi._dirty.pop(self, None)  # type: ignore[call-overload]
        if status != errno.ECANCELED:
            for req in failed:
                req._status = status
                req._state = PENDING
            self._pending.extend(failed)
            self._complete_pending()
            if self._cb_cnt == 0 and self._close_deferred:
                self._close_now()
            return
        now = []
        for req in failed:
            req._status = status
            req._state = PENDING
            if req._zc_wait:
                self._pending.append(req)
            else:
                now.append(req)
        self._cb_cnt += 1
        try:
            for req in now:
                self._complete(req)
        finally:
            self._cb_cnt -= 1
        self._complete_pending()
        if self._cb_cnt == 0 and self._close_deferred:
            self._close_now()

    def _zc_released(self, req: Request) -> None:
        """One zero-copy chunk of ``req`` was released by the kernel."""
        if req._zc_wait > 0:
            req._zc_wait -= 1
        else:
            logger.error("%r: zero-copy release for a request not waiting for one", self)


class GroupCore:
    """The base of :class:`netimpl.SockGroup`. Compiled, its poll's state (``_impls``, ``_socks``,
    ``_ready``, ``stats``, ``_wake_fd``, ``_closed``, ``_busy``, ``_polling``) are C fields that
    ``group_poll`` reads without a lookup; here they live in the instance's ``__dict__``."""

    __slots__ = ()


class GroupImplCore:
    """The base of :class:`netimpl.impl.GroupImpl`: compiled, ``impl``, ``_dirty`` and ``_owner`` are
    C fields; here they live in the instance's ``__dict__``."""

    __slots__ = ()

    #: The thread (``threading.get_ident()``) that alone may drive this group impl and its
    #: sockets' writes, or 0 when any thread may. Checked before a call changes anything.
    _owner = 0


class PosixGroupState(GroupImplCore):
    """The base of :class:`netimpl.posix.group.PosixGroupImpl`: compiled, ``_fds``, ``_want_out``,
    ``_orphanage``, ``_epfd`` and ``_orphan_fd`` are C fields."""

    __slots__ = ()


class SockList(OrderedDict):
    """A group's pending-recv list and a group impl's dirty list: an ordered set of sockets, as an
    ordered dict of sockets to None (whose first entry comes out in O(1), where a plain dict walks
    the deleted entries at its front). The compiled core's ``ReadyList`` and ``DirtyList`` link
    their sockets through the sockets themselves, with the same interface; they also take a socket
    off another list of their kind when it joins one, which here cannot arise (a socket leaves its
    group's lists when it leaves the group, and only members join them)."""

    __slots__ = ()

    def popfirst(self) -> Any:
        """Take the first socket out and return it (KeyError when empty)."""
        return self.popitem(last=False)[0]


def flush_dirty(gi: "GroupImpl") -> None:
    """Flush every socket of ``gi`` with queued requests (deferred ones stay dirty)."""
    dirty = gi._dirty
    if not dirty:
        return
    for sock in list(dirty):
        if sock._group_impl is not gi:  # it left this group impl meanwhile (a callback moved it)
            dirty.pop(sock, None)
            continue
        if sock._cb_cnt or sock._closed:
            continue
        sock._flush()
        if not sock._queued:
            dirty.pop(sock, None)
