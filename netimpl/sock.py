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

The request queues and the per-request work (``writev_async``, ``flush``,
``recv_into``, send accounting, completion, aborts) are the base class,
:class:`netimpl.accel.SockCore`: compiled where it was built, else the
Python reference in :mod:`netimpl._pycore`.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Any, ClassVar, Iterable

from ._pycore import IOV_BATCH_SIZE, MIN_SOCK_PIPE_SIZE
from .accel import SockCore, completions, native
from .errors import callback_errors, ebadf
from .pipe import Pipe
from .stats import SockStatsType

if TYPE_CHECKING:
    from .group import SockGroup
    from .group.sockgroup import ReadCallback
    from .impl import GroupImpl, NetImpl
    from .options import ImplOpts, SockOpts

__all__ = ["Sock", "IOV_BATCH_SIZE", "MIN_SOCK_PIPE_SIZE", "RECV_NEXT_SIZE", "completions"]

#: The most one :meth:`Sock.recv_next` reads from the kernel where the backend holds no buffers
#: of its own (uring's are its provided buffers): one read of a 64 KiB burst, as a TCP segment
#: train at loopback's MTU delivers it.
RECV_NEXT_SIZE = 64 * 1024


class _SockType(type(SockCore)):  # type: ignore[misc]
    @property
    def completions(cls) -> int:
        """Requests completed in this process, every socket together; a group poll that sees it move
        does not sleep. (Counted by the core, compiled or Python: :func:`completions`.)"""
        return completions()


class Sock(SockCore, metaclass=_SockType):
    """A non-blocking TCP socket of some backend; the contract is docs/api.md ("Sock")."""

    impl_name: str = "?"
    #: Requests completed in this process (a class attribute, read-only: see _SockType).
    completions: ClassVar[int]

    def __init__(self, impl: "NetImpl", fd: int, impl_opts: "ImplOpts", sock_opts: "SockOpts") -> None:
        self._impl = impl
        self.impl_name = impl.name
        self._fd = fd
        self._impl_opts = impl_opts
        self._sock_opts = sock_opts
        self._init_queues()
        self._group: "SockGroup | None" = None
        self._read_cb: "ReadCallback | None" = None  # the callback _group calls when it is readable
        self._group_impl: "GroupImpl | None" = None
        self._group_pid = -1
        self._read_paused = False  # SockGroup.pause_reading: no read callback, no readiness wake-up
        self._pipe: Pipe | None = Pipe(impl_opts.recv_buf_size) if impl_opts.enable_recv_pipe and impl_opts.recv_buf_size > 0 else None
        self._recvlowat = 1
        self.stats = self._stats = SockStatsType(impl.name)  # _stats: the compiled core's own reference

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

    def _read_bytes(self, n: int) -> bytes | memoryview | None:
        """*backend*: up to ``n`` bytes from the kernel as a new read-only object; as :meth:`_readv`.

        The kernel read of :meth:`recv_next`; a backend overrides it when it
        can read into a new object without first zeroing a buffer.
        """
        buf = bytearray(n)
        k = self._read_into(buf)
        if k is None:
            return None
        del buf[k:]
        return memoryview(buf).toreadonly()

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

    # -- receive (recv_into and readv are the core's) ----------------------

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

    def recv_next(self) -> memoryview | None:
        """The next bytes received, without a copy where the backend holds them: a read-only view.

        SPDK's ``spdk_sock_recv_next``. Empty at EOF; ``None`` when nothing
        can be read now; raises as :meth:`recv_into`, after the bytes
        received before the error. How much one view holds is the
        backend's: one that receives into buffers of its own lends one of
        them, and takes it back when the last view of it is released
        (``view.release()``, or the last reference gone); here, what the
        recv pipe holds, else one read of up to :data:`RECV_NEXT_SIZE` bytes
        into a new object. A view stays valid after the socket and its group
        close, and may be released from any thread. A lent buffer is one the
        backend cannot receive into: release views when done with them.
        """
        if self._closed:
            raise ebadf()
        pipe = self._pipe
        if pipe is not None and (avail := pipe.bytes_available()):
            buf = bytearray(avail)
            pipe.read_into(buf)  # counted in stats when the pipe was filled
            return memoryview(buf).toreadonly()
        data = self._read_bytes(RECV_NEXT_SIZE)
        if data is None:
            return None
        if data:
            self.stats.bytes_received += len(data)
        return data if type(data) is memoryview else memoryview(data)

    def _has_buffered(self) -> bool:
        """True when the recv pipe holds unread bytes."""
        pipe = self._pipe
        return pipe is not None and pipe.bytes_available() > 0

    # -- send -------------------------------------------------------------

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


if native is not None:
    native.set_base_has_buffered(Sock.__dict__["_has_buffered"])  # the compiled poll checks the pipe itself
