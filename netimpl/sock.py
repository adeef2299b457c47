"""The generic socket: request queues, completion order, recv pipe, close.

:class:`Sock` is what SPDK's ``struct spdk_sock`` is to its net impls: the
generic layer owns the request queues, the recv pipe, the callback-depth
guard and the close protocol; a backend subclasses it and fills in the
methods marked *backend* (the per-socket half of the net-impl table, the
other half being :class:`netimpl.impl.NetImpl`).

Facts that shape this module:

* Requests complete in the order they were queued. A request is *pending*
  once all its bytes are in the kernel; on a zero-copy socket it completes
  only when the kernel has released every chunk of it (``_zc_wait`` falls to
  0), which may be long after a later request was fully sent.
* A callback may queue requests, close its socket or remove it from its
  group. While callbacks run on a socket (``_cb_cnt`` > 0) flushing it is
  deferred, and a ``close`` only marks it closed: the backend's close runs
  when the last callback returns, so no loop in the layer below ever sees
  its socket vanish under it.
* Exceptions from callbacks are recorded (:mod:`netimpl.errors`) and raised
  by the public call once the queues are consistent again.
"""

from __future__ import annotations

import errno
from collections import deque
from threading import get_ident
from typing import TYPE_CHECKING, Any, Iterable

from .errors import callback_errors, ebadf, logger, wrong_thread
from .pipe import Pipe
from .request import FREE, PENDING, QUEUED, Request
from .stats import SockStats

if TYPE_CHECKING:
    from .group import SockGroup
    from .impl import GroupImpl, NetImpl
    from .options import ImplOpts, SockOpts

__all__ = ["Sock", "IOV_BATCH_SIZE"]

#: Most iovecs gathered into one send, and the queue depth that flushes at once.
IOV_BATCH_SIZE = 64
#: reads of at least this many bytes bypass an empty recv pipe (SPDK's MIN_SOCK_PIPE_SIZE)
MIN_SOCK_PIPE_SIZE = 1024


def _byte_view(buf: Any) -> memoryview:
    mv = memoryview(buf)
    if mv.readonly:
        raise TypeError("recv buffer is read-only")
    if mv.ndim != 1 or mv.itemsize != 1:
        mv = mv.cast("B")
    return mv


class Sock:
    """A non-blocking TCP socket of some backend; the contract is docs/api.md ("Sock")."""

    impl_name: str = "?"

    #: Requests completed in this process; a group poll that sees it move does not sleep.
    completions = 0

    def __init__(self, impl: "NetImpl", fd: int, impl_opts: "ImplOpts", sock_opts: "SockOpts") -> None:
        self._impl = impl
        self.impl_name = impl.name
        self._fd = fd
        self._impl_opts = impl_opts
        self._sock_opts = sock_opts
        self._queued: deque[Request] = deque()
        self._pending: deque[Request] = deque()
        self._queued_iovcnt = 0
        self._queued_bytes = 0
        self._cb_cnt = 0
        self._closed = False
        self._close_deferred = False
        self._group: "SockGroup | None" = None
        self._group_impl: "GroupImpl | None" = None
        self._group_pid = -1
        self._read_paused = False  # SockGroup.pause_reading: no read callback, no readiness wake-up
        self._pipe: Pipe | None = Pipe(impl_opts.recv_buf_size) if impl_opts.enable_recv_pipe and impl_opts.recv_buf_size > 0 else None
        self._recvlowat = 1
        self.stats = SockStats(impl.name)

    # ------------------------------------------------------------------
    # backend half of the interface
    # ------------------------------------------------------------------

    def _readv(self, bufs: list[memoryview]) -> int | None:
        """*backend*: read from the kernel into ``bufs``; ``None`` on EAGAIN, 0 on EOF; may raise OSError."""
        raise NotImplementedError

    def _read_into(self, buf: bytearray) -> int | None:
        """*backend*: read from the kernel into one bytearray; as :meth:`_readv`.

        The hot path of ``recv_into``; a backend overrides it when one buffer
        can be read with less work than a vector.
        """
        return self._readv([buf])  # type: ignore[list-item]

    def _writev(self, bufs: list[Any]) -> int | None:
        """*backend*: write ``bufs`` directly (by copy); ``None`` on EAGAIN; may raise OSError."""
        raise NotImplementedError

    def _flush(self) -> None:
        """*backend*: hand queued requests to the kernel as far as it takes them now; never blocks.

        Uses :meth:`_requests_sent`, :meth:`_complete_pending` and
        :meth:`_fail_queued`; reaps zero-copy completions where it can.
        """
        raise NotImplementedError

    def _accept(self) -> "Sock | None":
        """*backend*: accept one pending connection, or ``None``."""
        raise NotImplementedError

    def _close(self) -> None:
        """*backend*: release the socket. Queued requests are already aborted;
        pending ones (zero-copy in flight) must complete before their buffers
        are handed back, however the backend arranges that."""
        raise NotImplementedError

    def _set_recvlowat(self, n: int) -> None:
        """*backend*: SO_RCVLOWAT."""
        raise NotImplementedError

    def _set_recvbuf(self, n: int) -> None:
        """*backend*: SO_RCVBUF."""
        raise NotImplementedError

    def _set_sendbuf(self, n: int) -> None:
        """*backend*: SO_SNDBUF."""
        raise NotImplementedError

    def getaddr(self) -> tuple[str, int, str, int]:
        """``(local_host, local_port, peer_host, peer_port)``; a listener's peer is ``("", 0)``."""
        raise NotImplementedError

    def is_ipv4(self) -> bool:
        """True for an IPv4 socket."""
        raise NotImplementedError

    def is_ipv6(self) -> bool:
        """True for an IPv6 socket."""
        raise NotImplementedError

    def is_connected(self) -> bool:
        """True while the peer has not closed and no error is pending (a MSG_PEEK probe)."""
        raise NotImplementedError

    @property
    def placement_id(self) -> int:
        """The NAPI id or CPU the socket's traffic arrives on; -1 when unknown or disabled."""
        return -1

    @property
    def zerocopy(self) -> bool:
        """True when zero-copy send is in force on this socket."""
        return False

    # ------------------------------------------------------------------
    # public API
    # ------------------------------------------------------------------

    def fileno(self) -> int:
        """The kernel fd; -1 once closed."""
        return -1 if self._closed else self._fd

    @property
    def group(self) -> "SockGroup | None":
        """The group the socket is in, or None."""
        return self._group

    @property
    def closed(self) -> bool:
        """True once close() has been called."""
        return self._closed

    def __enter__(self) -> "Sock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"fd={self._fd}"
        return (f"<{type(self).__name__} impl={self.impl_name} {state} queued={len(self._queued)} "
                f"pending={len(self._pending)} zerocopy={self.zerocopy if not self._closed else '-'}>")

    def _check_open(self) -> None:
        if self._closed:
            raise ebadf()

    def accept(self) -> "Sock | None":
        """Accept one connection without blocking; ``None`` when none is pending."""
        self._check_open()
        return self._accept()

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

    def _recv(self, views: list[Any]) -> int | None:
        pipe = self._pipe
        if pipe is None:
            n = self._readv(views)
        else:
            if not pipe.bytes_available():
                want = sum(len(v) for v in views)
                if want >= MIN_SOCK_PIPE_SIZE:
                    # As SPDK: a read this large gains nothing from the pipe but a copy;
                    # it goes straight to the caller's buffers.
                    n = self._readv(views)
                    if n:
                        self.stats.bytes_received += n
                    return n
                n = pipe.fill(self._readv)
                if not n:
                    return n
                self.stats.bytes_received += n
            if len(views) == 1:
                return pipe.read_into(views[0])
            n = 0
            for v in views:
                got = pipe.read_into(v)
                n += got
                if got < len(v):
                    break
            return n
        if n:
            self.stats.bytes_received += n
        return n

    def _has_buffered(self) -> bool:
        """True when the recv pipe holds unread bytes."""
        pipe = self._pipe
        return pipe is not None and pipe.bytes_available() > 0

    # -- send -------------------------------------------------------------

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

    def writev(self, bufs: Iterable[Any]) -> int | None:
        """Write directly after flushing the queue; ``None`` (nothing written) if the queue would not drain."""
        if self._closed:
            raise ebadf()
        gi = self._group_impl
        if gi is not None and gi._owner:
            gi._check_thread(self, "writev")
        bufs = list(bufs)
        if self._queued:
            self.flush()
            if self._queued:
                return None
        n = self._writev(bufs)
        if n:
            self.stats.bytes_sent += n
        return n

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
        req._offset = 0
        req._zc_wait = 0
        req._status = 0
        queued = self._queued
        queued.append(req)
        self._queued_iovcnt += len(req._bufs)
        self._queued_bytes += req._nbytes
        if len(queued) == 1 and gi is not None:
            gi._dirty[self] = None
            group = self._group
            if group._wake_fd >= 0 and not group._polling:  # type: ignore[union-attr]
                group._work_arrived()  # type: ignore[union-attr]  # no kernel event will announce it
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
        self._queued_bytes -= req._nbytes
        Sock.completions += 1
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

        A request partly handed to the kernel by zero-copy still waits for
        its release; every other failed request completes now, before later
        zero-copy requests if need be (SPDK's abort order).
        """
        queued = self._queued
        if not queued:
            return
        failed = list(queued)
        queued.clear()
        self._queued_iovcnt = 0
        gi = self._group_impl
        if gi is not None:
            gi._dirty.pop(self, None)
        waiting = []
        for req in failed:
            req._status = status
            req._state = PENDING
            if req._zc_wait:
                waiting.append(req)
        if waiting:
            self._pending.extend(waiting)
        self._cb_cnt += 1
        try:
            for req in failed:
                if not req._zc_wait:
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

    # -- close ------------------------------------------------------------

    def close(self) -> None:
        """Close; idempotent. Queued requests complete with ECANCELED before this returns;
        zero-copy sends in flight complete when the kernel releases them."""
        if self._closed:
            return
        group = self._group
        if group is not None:
            group._detach(self)  # first: if the backend refuses, nothing has changed
        self._closed = True
        self._fail_queued(errno.ECANCELED)
        if self._cb_cnt == 0 and not self._close_deferred:
            self._close_now()
        else:
            self._close_deferred = True
        if callback_errors.pending and self._cb_cnt == 0:
            callback_errors.reraise()

    def _close_now(self) -> None:
        self._close_deferred = False
        self._pipe = None
        self._close()

    # -- buffer sizes -----------------------------------------------------

    def set_recvlowat(self, n: int) -> None:
        """SO_RCVLOWAT: wake the group only when at least ``n`` bytes are readable."""
        self._check_open()
        n = _positive_int("recvlowat", n)
        self._set_recvlowat(n)
        self._recvlowat = n

    def set_recvbuf(self, n: int) -> None:
        """SO_RCVBUF, and resize the recv pipe keeping unread bytes.

        Shrinking the pipe below what it holds raises ``ValueError`` and
        changes nothing.
        """
        self._check_open()
        n = _positive_int("recvbuf", n)
        pipe = self._pipe
        new = pipe.resized(n) if pipe is not None else None
        self._set_recvbuf(n)
        if new is not None:
            self._pipe = new

    def set_sendbuf(self, n: int) -> None:
        """SO_SNDBUF."""
        self._check_open()
        self._set_sendbuf(_positive_int("sendbuf", n))


def _positive_int(what: str, n: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"{what} size must be an int, not {n!r}")
    if n <= 0 or n > (1 << 31) - 1:
        raise ValueError(f"{what} size {n!r} is out of range (1..{(1 << 31) - 1})")
    return n
