"""UringSock: a kernel TCP socket whose group I/O goes through io_uring.

Outside a group it is a :class:`~netimpl.posix.sock.PosixSock`: flushes are
synchronous ``sendmsg`` calls with MSG_ZEROCOPY completions on the error
queue (SPDK's flush_client path), so nothing of that is written twice. In a
group it has, as in SPDK's uring module, at most one write task in flight
(SENDMSG or SENDMSG_ZC over up to 64 gathered iovecs) and one poll for
readiness; reads then use the shared recv pipe.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..posix.sock import PosixSock

if TYPE_CHECKING:
    from .group import UringGroupImpl


class UringSock(PosixSock):
    """A socket of backend ``uring``."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._send = None          # struct ni_send, allocated on the first ring send
        self._send_ud = 0          # user_data of the write task in flight, 0 when none
        self._send_iovs: list | None = None  # what that task's iovecs point into
        self._send_total = 0       # bytes that task asked the kernel to take
        self._poll_ud = 0          # user_data of the socket's readiness poll while in a group
        self._poll_armed = False   # that poll is in the kernel
        self._out_armed = False    # waiting in the group's write-space set: no send until it has room
        self._out_registered = False  # its fd is in that set (armed or not)

    def _flush(self) -> None:
        gi: "UringGroupImpl | None" = self._group_impl  # type: ignore[assignment]
        if gi is None:
            PosixSock._flush(self)
        else:
            gi.flush_sock(self, submit=True)

    def _close(self) -> None:
        # Ring zero-copy notifications need no fd; only error-queue ones do.
        if (self._zc is not None and self._zc.inflight) or self._unix_path is not None:
            PosixSock._close(self)
        else:
            self._s.close()
