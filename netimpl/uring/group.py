"""UringGroupImpl: the uring sockets of a group, served by one io_uring.

Facts that shape it:

* One ``io_uring_enter`` per poll submits every prepared SQE (the sends of
  all dirty sockets, the polls to re-arm) and, with a timeout, waits.
* POLL_ADD is one-shot: a socket is re-armed at the start of the next poll,
  after its read callback ran, so unread data is reported again, as a
  level-triggered epoll would.
* SENDMSG_ZC posts two CQEs: the send's result, with IORING_CQE_F_MORE, and
  later a notification (IORING_CQE_F_NOTIF) when the kernel releases the
  pages; with IORING_SEND_ZC_REPORT_USAGE its res says whether it copied.
  A request completes on the notification only.
* The ring is created on first use by the thread that polls, so that
  IORING_SETUP_SINGLE_ISSUER holds: from then on a group is driven by that
  one thread (poll, add, remove, pause, and its sockets' writev_async, flush,
  writev and close); a call from another thread raises EEXIST before it
  changes anything (``GroupImpl._owner``).
* A send on a full socket completes at once with -EAGAIN (or short).
  Sending again at once would spin, and so would a POLL_ADD for POLLOUT:
  io_uring adds POLLERR, POLLHUP and POLLRDHUP to every poll's mask, so on a
  socket whose peer has shut down its side (a half-close, as NBD and HTTP
  clients do) it completes at once, writable or not. So a socket waiting
  for write space goes into a small epoll set of the group's, one-shot
  EPOLLOUT (epoll honours the mask), and one POLL_ADD on that set's fd,
  through the ring, wakes the group when any of them can take more.
* With IORING_SETUP_DEFER_TASKRUN nothing wakes a task that polls the ring
  fd; only an eventfd registered with the ring (IORING_REGISTER_EVENTFD) is
  signalled as completions are queued. :meth:`fileno` returns that eventfd,
  made on first use; a poll then drains it before entering the ring, so a
  completion that comes later signals it again and no wake-up is lost.
* A socket paused for reading keeps no readiness poll armed: a poll already
  in flight is let complete and not re-armed; resume re-arms it, and a
  POLL_ADD on a readable socket completes at once.
* Completions are reaped into a backlog before any is dispatched. Removing a
  socket from inside a callback cancels its operations and dispatches the
  backlog entries that are its own while waiting, leaving the others for the
  outer loop: no CQE is ever dispatched to a socket that left the group, and
  none is lost (SPDK's uring module crashed exactly there: #2406, #2112).
"""

from __future__ import annotations

import errno
import os
import select
import threading
import time
from collections import deque
from typing import TYPE_CHECKING

from ..errors import logger, wrong_thread
from ..impl import GroupImpl
from ..posix.sock import _SEND_FLAGS, _gather
from ..sock import Sock
from .ring import Ring, ffi, lib

if TYPE_CHECKING:
    from . import UringImpl
    from .sock import UringSock

POLL, SEND, CANCEL, ORPHANS, WRITABLE = range(5)

POLL_MASK = select.POLLIN | select.POLLERR | select.POLLHUP | select.POLLRDHUP
_READABLE = select.POLLIN | select.POLLHUP | select.POLLRDHUP
F_MORE = lib.IORING_CQE_F_MORE if lib is not None else 0
F_NOTIF = lib.IORING_CQE_F_NOTIF if lib is not None else 0
ZC_COPIED = lib.IORING_NOTIF_USAGE_ZC_COPIED if lib is not None else 0

#: CQ room the ring is created with per socket already in the group.
CQES_PER_SOCK = 4
#: IORING_MAX_CQ_ENTRIES; past the CQ, IORING_FEAT_NODROP holds completions back instead of losing them.
MAX_CQ_ENTRIES = 65536
#: How long closing a group waits for zero-copy notifications still owed.
CLOSE_WAIT = 5.0
#: Rings whose group closed with notifications owed: kept alive, never reused.
_abandoned: list[Ring] = []


class UringGroupImpl(GroupImpl):
    """The uring part of a :class:`netimpl.SockGroup`."""

    def __init__(self, impl: "UringImpl") -> None:
        super().__init__(impl)
        self._ring: Ring | None = None
        self._ring_thread: threading.Thread | None = None  # the thread that created the ring: the only one that may enter it
        self._ops: dict[int, tuple] = {}          # user_data -> (kind, sock, extra)
        self._next_ud = 1
        self._unarmed: dict["UringSock", None] = {}
        self._inflight: dict["UringSock", int] = {}
        self._backlog: deque[tuple[int, int, int]] = deque()
        self._removing: set["UringSock"] = set()
        self._orphans_armed = False
        self._zc_op = impl.zerocopy_opcode
        self._efd = -1  # the eventfd behind fileno(), once asked for
        self._out_ep: select.epoll | None = None           # sockets waiting for write space, EPOLLOUT one-shot
        self._out_waiting: dict[int, "UringSock"] = {}    # fd -> socket, while it waits
        self._out_ud = self._ud(WRITABLE, None)            # the POLL_ADD on _out_ep's fd
        self._out_armed = False

    @property
    def ring(self) -> Ring:
        ring = self._ring
        if ring is None:
            opts = self.impl._opts
            # Per socket at most a poll, a send and its notification, and a cancel, in flight at once.
            cq = min(max(opts.cq_entries, CQES_PER_SOCK * len(self.socks)), MAX_CQ_ENTRIES)  # type: ignore[attr-defined]
            ring = self._ring = Ring(opts.ring_entries, cq)  # type: ignore[attr-defined]
            self._ring_thread = threading.current_thread()
            self._owner = threading.get_ident()
        return ring

    def fileno(self) -> int:
        """An eventfd the kernel signals as completions are queued (the ring fd would not wake a
        DEFER_TASKRUN ring's poller)."""
        if self._efd < 0:
            ring = self.ring
            efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            try:
                ring.register_eventfd(efd)
            except BaseException:
                os.close(efd)
                raise
            self._efd = efd
        return self._efd

    def _ud(self, kind: int, sock, extra=None) -> int:
        ud = self._next_ud
        self._next_ud = ud + 1
        self._ops[ud] = (kind, sock, extra)
        return ud

    # -- membership ----------------------------------------------------------

    def add_sock(self, sock: "UringSock") -> None:  # type: ignore[override]
        self._check_thread(sock, "add_sock")
        # One user_data serves every re-arm of each of the socket's polls: no op entry made and dropped per event.
        sock._poll_ud = self._ud(POLL, sock)
        sock._poll_armed = sock._out_armed = sock._out_registered = False
        self._unarmed[sock] = None
        self._inflight[sock] = 0

    def remove_sock(self, sock: "UringSock") -> None:  # type: ignore[override]
        self._check_thread(sock, "remove_sock")  # before anything changes: the socket stays whole, in its group
        self._unarmed.pop(sock, None)
        if self._inflight.get(sock, 0) and self._ring is not None:
            self._removing.add(sock)
            try:
                self._cancel_and_wait(sock)
            finally:
                self._removing.discard(sock)
        self._inflight.pop(sock, None)
        self._ops.pop(sock._poll_ud, None)
        sock._poll_ud = 0
        sock._poll_armed = False
        if sock._out_registered:
            self._out_waiting.pop(sock._fd, None)
            try:
                self._out_ep.unregister(sock._fd)  # type: ignore[union-attr]
            except OSError:
                pass
            sock._out_registered = sock._out_armed = False

    def pause(self, sock: "UringSock") -> None:  # type: ignore[override]
        self._unarmed.pop(sock, None)  # a poll in flight completes, and is not re-armed

    def resume(self, sock: "UringSock") -> None:  # type: ignore[override]
        if not sock._poll_armed:
            self._unarmed[sock] = None

    def _cancel_and_wait(self, sock: "UringSock") -> None:
        ring = self.ring
        ring.prep_cancel_fd(sock._fd, self._ud(CANCEL, sock))
        deadline = time.monotonic() + 10.0
        backlog = self._backlog
        while self._inflight.get(sock, 0) > 0:
            ring.submit(1, 0.1)
            backlog.extend(ring.reap())
            mine = [e for e in backlog if self._op_sock(e[0]) is sock]
            if mine:
                # In place: an outer poll may be iterating this very deque.
                rest = [e for e in backlog if self._op_sock(e[0]) is not sock]
                backlog.clear()
                backlog.extend(rest)
                for ud, res, flags in mine:
                    self._dispatch(ud, res, flags, None)
            if time.monotonic() > deadline:
                raise OSError(errno.ETIMEDOUT, f"{sock!r}: io_uring did not complete its cancelled operations")

    def _op_sock(self, ud: int):
        op = self._ops.get(ud)
        return op[1] if op is not None else None

    # -- sending -------------------------------------------------------------

    def flush_dirty(self) -> None:
        """Start a write task for every dirty socket that has none in flight.

        A socket leaves ``_dirty`` when its write task starts; the task's
        completion puts it back if requests are still queued.
        """
        dirty = self._dirty
        for sock in list(dirty):
            if sock._send_ud or sock._out_armed or not sock._queued:  # type: ignore[attr-defined]
                dirty.pop(sock, None)
            elif not (sock._cb_cnt or sock._closed):
                self.flush_sock(sock, submit=False)  # type: ignore[arg-type]

    def flush_sock(self, sock: "UringSock", submit: bool) -> None:
        """Start the socket's write task if none is in flight; submit now if asked."""
        if sock._send_ud or sock._out_armed or not sock._queued or sock._cb_cnt or sock in self._removing:
            return
        iovs, total = _gather(sock._queued)
        if not total:
            sock._requests_sent(0, False)
            sock._complete_pending()
            return
        send = sock._send
        if send is None:
            send = sock._send = ffi.new("struct ni_send *")
            send.fd = sock._fd
            send.msg_flags = _SEND_FLAGS
        zc = sock._zc is not None and self._zc_op and total >= sock._impl_opts.zerocopy_threshold
        send.zerocopy = zc
        ud = send.user_data = self._ud(SEND, sock, zc)
        self.ring.prep_send_bufs(send, iovs)
        sock._send_iovs = iovs  # the kernel reads these (slices included) until the CQE
        sock._send_total = total
        sock._send_ud = ud
        self._dirty.pop(sock, None)
        self._inflight[sock] = self._inflight.get(sock, 0) + 1
        if submit:
            sock.stats.syscalls += 1
            self.ring.submit()

    # -- the poll --------------------------------------------------------------

    def poll(self, max_events: int, timeout: float) -> list["UringSock"]:  # type: ignore[override]
        if self._owner and self._owner != threading.get_ident():
            raise wrong_thread(self, "poll")
        ring = self.ring
        if self._efd >= 0:
            try:
                os.eventfd_read(self._efd)  # reset; what completes from here on signals it again
            except BlockingIOError:
                pass
        if self._dirty:
            self.flush_dirty()
        ready: list["UringSock"] = []
        backlog = self._backlog
        before = Sock.completions
        deadline = 0.0
        while True:
            self._arm_polls()
            wait = timeout > 0 and not backlog and not ring.cq_ready()
            if wait and not deadline:
                deadline = time.monotonic() + timeout
            ring.submit(1 if wait else 0, timeout if wait else None)
            backlog.extend(ring.reap())
            while backlog:
                ud, res, flags = backlog.popleft()
                self._dispatch(ud, res, flags, ready)
            if self._dirty:
                self.flush_dirty()  # callbacks queued more, or write space came: sent with the next enter
            if ready or not wait or Sock.completions != before:
                return ready
            # Only completions the caller cannot see (a paused socket's poll, a write-space poll
            # whose send is now prepared): wait on for what is left of the timeout.
            timeout = deadline - time.monotonic()
            if timeout <= 0.0005:
                return ready

    def _arm_polls(self) -> None:
        """Prepare the readiness polls of sockets not armed yet (and the orphanage's)."""
        ring = self.ring
        inflight = self._inflight
        for sock in self._unarmed:
            ring.prep_poll_add(sock._fd, POLL_MASK, sock._poll_ud)
            sock._poll_armed = True
            inflight[sock] += 1
        self._unarmed.clear()
        orphanage = self.impl.orphanage  # type: ignore[attr-defined]
        if len(orphanage) and not self._orphans_armed:
            ring.prep_poll_add(orphanage.fileno(), select.POLLIN, self._ud(ORPHANS, None))
            self._orphans_armed = True

    def before_wait(self) -> bool:
        ring = self._ring
        if ring is None:
            return False
        self._check_thread(self, "poll")
        if self._dirty:
            self.flush_dirty()
        self._arm_polls()
        if ring.sq_pending():
            ring.submit(0)  # completions from here on signal the eventfd
        return bool(self._backlog) or ring.cq_ready() > 0

    def _dispatch(self, ud: int, res: int, flags: int, ready: list | None) -> None:
        op = self._ops.get(ud)
        if op is None:
            logger.error("uring: completion for unknown user_data %d (res %d)", ud, res)
            return
        kind, sock, extra = op
        if kind == SEND:
            if flags & F_NOTIF:
                self._on_notif(ud, sock, extra, res)
            else:
                self._on_send(ud, sock, extra, res, flags)
        elif kind == POLL:
            self._inflight[sock] = self._inflight.get(sock, 1) - 1
            sock._poll_armed = False
            if sock._group_impl is not self or sock in self._removing or sock._closed:
                return
            if res >= 0 and res & select.POLLERR and sock._zc is not None and sock._zc.inflight:
                sock._check_zcopy()
                if sock._closed or sock._group_impl is not self:
                    return
            if sock._read_paused:
                return  # not re-armed: resume does that
            self._unarmed[sock] = None
            if res < 0:
                if res != -errno.ECANCELED and ready is not None:
                    ready.append(sock)
                return
            if ready is not None and (res & _READABLE or (res & select.POLLERR and sock._zc is None)):
                ready.append(sock)
        elif kind == WRITABLE:
            self._out_armed = False
            self._writable()
        elif kind == CANCEL:
            del self._ops[ud]
        elif kind == ORPHANS:
            del self._ops[ud]
            self._orphans_armed = False
            self.impl.orphanage.reap()  # type: ignore[attr-defined]

    def _on_send(self, ud: int, sock: "UringSock", zc: bool, res: int, flags: int) -> None:
        sock._send_ud = 0
        sock._send_iovs = None
        self._inflight[sock] = self._inflight.get(sock, 1) - 1
        stats = sock.stats
        touched: list = []
        if res >= 0:
            stats.bytes_sent += res
            touched = sock._requests_sent(res, zc) or []
            if zc:
                stats.zerocopy_sends += 1
        # The op table is made consistent before any callback runs: a callback may close or
        # remove the socket, and that waits for (and dispatches) this very send's notification.
        if zc and flags & F_MORE:
            self._ops[ud] = (SEND, sock, touched)  # the notification comes later
        else:
            del self._ops[ud]
            if zc:
                for req in touched:
                    sock._zc_released(req)
        alive = not sock._closed and sock._group_impl is self and sock not in self._removing
        if res == -errno.EAGAIN or (0 <= res < sock._send_total):
            # The send buffer is full: wait for write space rather than try again at once.
            if alive and sock._queued and not sock._out_armed:
                self._wait_writable(sock)
        elif res < 0 and res not in (-errno.ECANCELED, -errno.EINTR):
            logger.debug("%r: send failed: %s", sock, errno.errorcode.get(-res, res))
            sock._fail_queued(-res)
        sock._complete_pending()
        if sock._queued and not sock._out_armed and not sock._closed and sock._group_impl is self \
                and sock not in self._removing:
            self._dirty[sock] = None

    def _wait_writable(self, sock: "UringSock") -> None:
        """Send nothing more on ``sock`` until the kernel says it has write space."""
        ep = self._out_ep
        if ep is None:
            ep = self._out_ep = select.epoll()
        mask = select.EPOLLOUT | select.EPOLLONESHOT
        if sock._out_registered:
            ep.modify(sock._fd, mask)
        else:
            ep.register(sock._fd, mask)
            sock._out_registered = True
        sock._out_armed = True
        self._out_waiting[sock._fd] = sock
        if not self._out_armed:
            self.ring.prep_poll_add(ep.fileno(), select.POLLIN, self._out_ud)
            self._out_armed = True

    def _writable(self) -> None:
        """The write-space set is readable: let every socket it names send again."""
        waiting = self._out_waiting
        for fd, _ev in self._out_ep.poll(0, len(waiting) + 1):  # type: ignore[union-attr]
            sock = waiting.pop(fd, None)
            if sock is None:
                continue
            sock._out_armed = False
            if sock._queued and not sock._closed and sock._group_impl is self and sock not in self._removing:
                self._dirty[sock] = None
        if waiting and not self._out_armed:
            self.ring.prep_poll_add(self._out_ep.fileno(), select.POLLIN, self._out_ud)  # type: ignore[union-attr]
            self._out_armed = True

    def _on_notif(self, ud: int, sock: "UringSock", touched: list, res: int) -> None:
        del self._ops[ud]
        if res & ZC_COPIED:
            sock.stats.zerocopy_copied += 1
        for req in touched:
            sock._zc_released(req)
        sock._complete_pending()

    def close(self) -> None:
        ring = self._ring
        if ring is None:
            return
        deadline = time.monotonic() + CLOSE_WAIT
        while any(op[0] == SEND for op in self._ops.values()) and time.monotonic() < deadline:
            ring.submit(1, 0.05)
            for ud, res, flags in ring.reap():
                self._dispatch(ud, res, flags, None)
        if any(op[0] == SEND for op in self._ops.values()):
            # Freeing the ring would not free the pages; but its owed callbacks could never run.
            logger.warning("uring group closed with zero-copy notifications still owed; keeping its ring")
            _abandoned.append(ring)
        else:
            ring.close()
        self._ring = None
        if self._out_ep is not None:
            self._out_ep.close()
            self._out_ep = None
        if self._efd >= 0:
            os.close(self._efd)
            self._efd = -1
