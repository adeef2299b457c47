"""UringSock: a kernel TCP socket whose group I/O goes through io_uring.

Outside a group it is a :class:`~netimpl.posix.sock.PosixSock`: flushes are
synchronous ``sendmsg`` calls with MSG_ZEROCOPY completions on the error
queue (SPDK's flush_client path), so nothing of that is written twice. In a
group it has, as in SPDK's uring module, at most one write task in flight
(SENDMSG or SENDMSG_ZC over up to 64 gathered iovecs), and a multishot
receive into the group's provided buffers (or, where the kernel lacks
that, one poll for readiness and ``recv(2)``; a listener: a multishot
accept, or a poll).

Reads: while the socket has a receive queue (``_rxq``, in a group with
multishot receive), ``recv_into`` and ``readv`` copy out of the buffers it
holds, in C (``_bridge.rx_copy``), then deliver EOF or the socket's error;
they call ``recv(2)`` when no multishot is armed and nothing is held, and
``recv_into`` does once it has copied a whole buffer's worth and has room
for another: a stream that fast has more waiting in the socket, and read
straight into the caller's buffer it costs the kernel's copy alone (on the
ring's own thread only, with every CQE reaped, so those bytes come after
every byte held; ``ni_rxq_read`` in ring.h says why).
In direct receive (a socket whose reads return a buffer's worth or more;
group.py says how it switches) a multishot poll watches the socket and
reads call ``recv(2)`` straight into the caller's buffer after the held
bytes.
``recv_next`` lends the oldest held buffer itself (``_bridge.rx_lend``): the
one copy left is the kernel's.
Bytes in the socket's own recv pipe (there from before it joined, or
copied there when it was paused or left a group) are older, and are read
first. ``_has_buffered`` counts held buffers, queued accepted connections
and an EOF or error not yet delivered, so the group's pending-recv list
serves them without a new kernel event.
"""

from __future__ import annotations

import errno
import os
import socket
from collections import deque
from typing import TYPE_CHECKING, Any

from ..posix.sock import PosixSock
from ..tcp import configure_accepted
from .group import ACCEPT, _as_method, _compiled
from .ring import _bridge, lib

if TYPE_CHECKING:
    from .group import UringGroupImpl

_rx_copy = _bridge.rx_copy if _bridge is not None else None
_rx_copyv = _bridge.rx_copyv if _bridge is not None else None
_rx_lend = _bridge.rx_lend if _bridge is not None else None


class UringSock(PosixSock):
    """A socket of backend ``uring``."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._send = None          # struct ni_send, allocated on the first ring send
        self._send_addr = 0        # its address, as _bridge takes it
        self._send_ud = 0          # user_data of the write task in flight, 0 when none
        self._write_ud = 0         # the op-table entry every plain (not zero-copy) write task uses, while in a group
        self._send_iovs: list | None = None  # what that task's iovecs point into
        self._send_total = 0       # bytes that task asked the kernel to take
        self._poll_ud = 0          # user_data of the socket's readiness poll / multishot while in a group
        self._poll_armed = False   # that operation is in the kernel
        self._rx_kind = 0          # group.POLL, RECV or ACCEPT: how the group watches it
        self._rxq: Any = None      # struct ni_rxq: its multishot receive and the buffers it holds
        self._rxq_addr = 0         # its address, as _bridge takes it; 0 when none
        self._rx_kud = 0           # the multishot receive's user_data in the kernel (to cancel it)
        self._rx_pipe_first = False  # the recv pipe holds bytes older than the held buffers
        self._rx_error = 0         # an error received in a group, not yet delivered (the socket left it)
        self._accepted: deque[int] = deque()  # fds a multishot accept took, not yet handed out
        self._out_armed = False    # waiting in the group's write-space set: no send until it has room
        self._out_registered = False  # its fd is in that set (armed or not)

    # -- receive ------------------------------------------------------------

    def _recv_into_py(self, buf: Any) -> int | None:
        addr = self._rxq_addr
        if addr and not self._rx_pipe_first:
            q = self._rxq
            calls = q.direct_calls
            n = _rx_copy(addr, buf)  # type: ignore[misc]
            self.stats.syscalls += q.direct_calls - calls  # recv(2) past the held buffers
            if n:
                self.stats.bytes_received += n
            return n
        return self._recv_other(buf, False)

    def readv(self, bufs: Any) -> int | None:
        addr = self._rxq_addr
        if addr and not self._rx_pipe_first:
            n = _rx_copyv(addr, bufs if isinstance(bufs, (list, tuple)) else list(bufs))  # type: ignore[misc]
            if n:
                self.stats.bytes_received += n
            return n
        return self._recv_other(bufs, True)

    def _recv_next_py(self) -> memoryview | None:
        """The oldest provided buffer the socket holds, lent as the kernel filled it (no copy).

        See :meth:`Sock.recv_next`. A view holds at most ``UringOpts.pbuf_size``
        bytes; its buffer goes back to the group's ring with its last view,
        in whatever thread that is. At most half the ring is lent at a time:
        beyond that this returns copies (each buffer back to the ring at
        once), so views kept for long never starve the receives. With no
        buffer held (in direct receive) a view is one recv(2) of up to
        ``RECV_NEXT_SIZE`` bytes into a new object, as posix reads.
        """
        addr = self._rxq_addr
        if addr and not self._rx_pipe_first:
            view = _rx_lend(addr)  # type: ignore[misc]
            if view:
                self.stats.bytes_received += len(view)
            return view
        if self._rx_pipe_first and not self._has_pipe_bytes():
            self._rx_pipe_first = False
            if self._rxq_addr:
                return self.recv_next()
        if self._rx_error and not self._closed and not self._has_pipe_bytes():
            self._raise_rx_error()
        return PosixSock.recv_next(self)

    def _recv_other(self, buf: Any, vector: bool) -> int | None:
        """Reads while the recv pipe holds older bytes, or with no receive queue."""
        if self._rx_pipe_first and not self._has_pipe_bytes():
            self._rx_pipe_first = False
            if self._rxq_addr:
                return self.readv(buf) if vector else self.recv_into(buf)
        if self._rx_error and not self._closed and not self._has_pipe_bytes():
            self._raise_rx_error()
        return PosixSock.readv(self, buf) if vector else PosixSock.recv_into(self, buf)

    def _has_pipe_bytes(self) -> bool:
        pipe = self._pipe
        return pipe is not None and pipe.bytes_available() > 0

    def _raise_rx_error(self) -> None:
        code, self._rx_error = self._rx_error, 0
        raise OSError(code, os.strerror(code))

    def _readv(self, bufs: list[memoryview]) -> int | None:
        # The generic path (recv pipe empty) comes here: same order as recv_into.
        if self._rxq_addr:
            return _rx_copyv(self._rxq_addr, bufs)  # type: ignore[misc]
        if self._rx_error:
            self._raise_rx_error()
        return PosixSock._readv(self, bufs)

    def _read_into(self, buf: bytearray) -> int | None:
        if self._rxq_addr:
            return _rx_copy(self._rxq_addr, buf)  # type: ignore[misc]
        if self._rx_error:
            self._raise_rx_error()
        return PosixSock._read_into(self, buf)

    def _has_buffered_py(self) -> bool:
        q = self._rxq
        if q is not None and lib.ni_rxq_readable(q):
            return True
        return bool(self._accepted) or PosixSock._has_buffered(self)

    # Compiled (bridge.c) with the group's hot path; the _py methods are their reference and slow paths.
    if _compiled:
        recv_into = _as_method(_bridge.sock_recv_into)
        recv_next = _as_method(_bridge.sock_recv_next)
        _has_buffered = _as_method(_bridge.sock_has_buffered)
    else:
        recv_into = _recv_into_py  # type: ignore[assignment]
        recv_next = _recv_next_py
        _has_buffered = _has_buffered_py

    # -- accept -------------------------------------------------------------

    def _accept(self) -> "UringSock | None":
        acc = self._accepted
        if not acc:
            if self._poll_armed and self._rx_kind == ACCEPT:  # the multishot accept takes what comes
                return None
            return PosixSock._accept(self)  # type: ignore[return-value]
        fd = acc.popleft()
        s = self._s
        ns = socket.socket(s.family, s.type, s.proto, fileno=fd)
        try:
            configure_accepted(ns, self._impl_opts, self._sock_opts)
            return type(self)(self._impl, ns, self._impl_opts, self._sock_opts, server=True)  # type: ignore[arg-type]
        except BaseException:
            ns.close()
            raise

    # -- send and close -------------------------------------------------------

    def _flush(self) -> None:
        gi: "UringGroupImpl | None" = self._group_impl  # type: ignore[assignment]
        if gi is None:
            PosixSock._flush(self)
        else:
            gi.flush_sock(self, True)

    def _close(self) -> None:
        while self._accepted:
            try:
                os.close(self._accepted.popleft())
            except OSError as exc:
                if exc.errno != errno.EBADF:
                    raise
        # Ring zero-copy notifications need no fd; only error-queue ones do.
        if (self._zc is not None and self._zc.inflight) or self._unix_path is not None:
            PosixSock._close(self)
        else:
            self._s.close()
