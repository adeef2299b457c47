"""UringGroupImpl: the uring sockets of a group, served by one io_uring.

On the compiled core, :meth:`poll`, :meth:`flush_dirty`, ``_prep_dirty``
and :meth:`flush_sock` are C (``_bridge``, netimpl/uring/bridge.c; the
group's poll calls the first two as C functions, with no Python call): the
common completions (a send completed whole, a multishot receive's report)
are dispatched there, and everything else reaches the Python methods
below (``_poll_py``, ``_dispatch``...), which are their reference and run
whole under ``NETIMPL_NATIVE=0``. Both share this object's state.

Facts that shape it:

* One ``io_uring_enter`` per poll submits every prepared SQE (the sends of
  all dirty sockets, the polls to re-arm) and, with a timeout, waits. The
  replies the read callbacks queue are submitted by one more enter when
  the group calls :meth:`flush_dirty` after them: a send on a socket with
  room completes during that enter, so its request callback runs there, as
  posix's does, and the next poll may sleep at once instead of returning
  for that completion.
* A flush with one socket to send on (DIRECT_SEND_MAX; at QD1, every
  flush) sends with sendmsg(2) instead, as posix does: one system call
  and no SQE, CQE or completion dispatch, where a SEND costs an enter of
  its own. Measured at QD1, against uvloop in the same runs: uring went
  from 1.3-1.5x to 0.85-1.0x (read-like) and from 1.4x to 1.05-1.25x
  (write-like); with four sockets allowed, 1,000 connections did not move.
  Many sockets still go as SENDs in one enter. What the kernel does not
  take waits in the write-space set (below), never as a SEND: on a full
  socket a SEND would wait in the kernel on a poll that a half-closed
  peer's POLLRDHUP wakes for ever. Zero-copy sockets always use the ring.
* With DEFER_TASKRUN an enter runs at most 20 items of task work
  (IO_LOCAL_TW_DEFAULT_MAX, 6.13 on; more only while it waits for more
  CQEs), the rest waiting for the next enter: an enter whose reap reached
  20 CQEs enters again (``enter_reap`` in bridge.c), so one poll serves
  every socket made readable before it entered (64 at once: 20 before). A
  poll that slept is woken by the first completion and serves what came
  by then; the rest is the next poll's. What the bound on extra enters
  leaves queued is not lost to a caller waiting on :meth:`fileno`: the
  CQEs those enters posted signalled the eventfd after the poll reset it.
* With DEFER_TASKRUN the eventfd is reset before an enter, never after: a
  reset after it could swallow the signal for task work that no CQE shows
  yet. :meth:`before_wait` resets it and enters when it was signalled, so
  a fully served group's fd stops being readable.
* Receiving is a multishot RECV per socket into the group's provided-buffer
  ring (:class:`~netimpl.uring.ring.BufRing`, facts in ring.h): one SQE
  for as long as data comes, its CQEs consumed in C (``_bridge.reap``),
  which files each buffer on the socket's ``struct ni_rxq`` and hands
  Python one entry per socket per reap. The held buffers are the socket's
  recv pipe: ``recv_into`` copies out of them in C and recycles each one
  read to its end. A multishot that ends for want of buffers (-ENOBUFS)
  is armed again once buffers are back in the ring; one that ends at EOF
  or an error is not (the held bytes, then 0 or the error, are delivered in
  that order). Where the kernel lacks it (probed, see :class:`UringImpl`)
  or it is switched off, a socket falls back to the one-shot POLL_ADD
  below and ``recv(2)``. With bundles (IORING_RECVSEND_BUNDLE, 6.10) one
  CQE covers as many buffers as the data filled (decoded in ring.h).
  The ring publishes a working set of its buffers, not all of them: the
  kernel fills them in ring order, so a ring of 512 published buffers
  would sweep 8 MiB of memory through the cache. ``ni_bufring_settle``
  (ring.h), after each reap, doubles the set when the reap found the ring
  drained and halves it after a window in which it stayed over half full;
  free buffers beyond it wait on a stack, the last freed first.
* Direct receive (``UringOpts.direct_recv``): where a socket's reads return
  a buffer's worth or more on average (``ni_rxq_note`` in ring.h), its
  reads want the socket's bytes straight into their buffers. Its next
  report reaches ``_dispatch``, which cancels the multishot receive; the
  receive's last CQE re-arms the socket with a multishot POLL_ADD under the
  same user_data, reaped onto its rxq as the receive's CQEs are
  (``rxq.more``: readiness not yet read), and reads call recv(2) after the
  held bytes. Reads averaging under a quarter of a buffer switch it back
  the same way. The poll never goes in while the receive is armed, so no
  buffer fills behind a read's back. Measured on write-like 16 x 32: 0.94
  to 0.65 µs per request, posix's figure (the copy out of the buffers was
  14% of the server's CPU, and the kernel's copy into buffers a fast
  stream sweeps through the cache cost more than into the reader's own).
  A multishot poll reports wake-ups: one that a read took before it was
  reaped makes a callback whose ``recv_into`` returns None.
* POLL_ADD is one-shot: a socket is re-armed at the start of the next poll,
  after its read callback ran, so unread data is reported again, as a
  level-triggered epoll would.
* A listener takes a multishot ACCEPT where the kernel has it: accepted fds
  queue on the listener until ``accept()`` hands them out, set up as a
  plain accept's (netimpl.tcp.configure_accepted).
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
  POLL_ADD on a readable socket completes at once. A paused socket's
  multishot receive (or accept) is cancelled, so what arrives stays in the
  kernel's socket buffer and no provided buffer is spent on it; what it
  already holds it keeps, and reports (``_has_buffered``) once resumed.
  Should the buffer ring run dry with sockets waiting for buffers, paused
  sockets' held buffers are copied into their own recv pipes and recycled.
* A socket leaving the group (remove, close) has its operations cancelled
  and waited for; then what its buffers still hold is copied into its own
  recv pipe, and an error not yet delivered is kept for its next read, so
  nothing is lost or reordered when it reads outside the group.
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
import socket
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from .. import accel
from ..errors import logger, wrong_thread
from ..impl import GroupImpl
from ..posix.sock import _SEND_FLAGS, PosixSock, _gather
from ..sock import RECV_NEXT_SIZE, completions
from ..pipe import Pipe
from .ring import BufRing, Ring, _bridge, address, ffi, lib

if TYPE_CHECKING:
    from . import UringImpl
    from .sock import UringSock

POLL, SEND, CANCEL, ORPHANS, WRITABLE, RECV, ACCEPT = range(7)

#: A flush with at most this many sockets to send on calls sendmsg(2) for each at once; more go
#: as SENDs, all in one io_uring_enter (measured: see the facts above).
DIRECT_SEND_MAX = 1

#: Preparations a flush repeats while direct sends' callbacks queue more (as TLS's flush_dirty does).
FLUSH_ROUNDS = 4



def _use_core() -> bool:
    """Pair bridge.c with the compiled core; False (the Python below serves) where either is missing or stale."""
    if _bridge is None or accel.native is None or not hasattr(_bridge, "use_core"):
        return False
    try:
        return bool(_bridge.use_core(accel.native._C_API, SEND, RECV, DIRECT_SEND_MAX, FLUSH_ROUNDS, RECV_NEXT_SIZE))
    except TypeError:  # a _bridge built from older sources takes other arguments
        return False


#: The group's hot path runs compiled (bridge.c on netimpl._native's sockets), else the Python below.
_compiled = _use_core()
_as_method = accel.native.as_method if _compiled else None  # type: ignore[union-attr]

if _compiled:
    #: The state the compiled poll reads, as C fields (bridge.c): UringGroupImpl's first base.
    _GroupState = _bridge.GroupState  # type: ignore[union-attr]
else:
    class _GroupState(accel.GroupImplCore):  # type: ignore[no-redef, name-defined]
        """Without bridge.c, the state lives in the instance's ``__dict__``."""

        __slots__ = ()

POLL_MASK = select.POLLIN | select.POLLERR | select.POLLHUP | select.POLLRDHUP
_READABLE = select.POLLIN | select.POLLHUP | select.POLLRDHUP
F_MORE = lib.IORING_CQE_F_MORE if lib is not None else 0
F_NOTIF = lib.IORING_CQE_F_NOTIF if lib is not None else 0
ZC_COPIED = lib.IORING_NOTIF_USAGE_ZC_COPIED if lib is not None else 0
_ACCEPT_FLAGS = socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
#: The provided-buffer ring's group id (one ring per group's io_uring).
BGID = 0

#: CQ room the ring is created with per socket already in the group.
CQES_PER_SOCK = 4
#: IORING_MAX_CQ_ENTRIES; past the CQ, IORING_FEAT_NODROP holds completions back instead of losing them.
MAX_CQ_ENTRIES = 65536
#: How long closing a group waits for zero-copy notifications still owed.
CLOSE_WAIT = 5.0
#: Rings whose group closed with notifications owed: kept alive, never reused.
_abandoned: list[Ring] = []


class UringGroupImpl(_GroupState, GroupImpl):
    """The uring part of a :class:`netimpl.SockGroup`."""

    def __init__(self, impl: "UringImpl") -> None:
        super().__init__(impl)
        self._ring: Ring | None = None
        self._ring_thread: threading.Thread | None = None  # the thread that created the ring: the only one that may enter it
        self._ops: dict[int, tuple] = {}          # user_data -> (kind, sock, extra)
        self._next_ud = 1
        self._ring_sends = 0  # write tasks started on the ring
        self._unarmed: dict["UringSock", None] = {}
        self._inflight: dict["UringSock", int] = {}  # its polls, receives and accepts (its write task: _send_ud)
        self._backlog: deque[tuple[int, int, int]] = deque()
        self._removing: set["UringSock"] = set()
        self._orphans_armed = False
        self._zc_op = impl.zerocopy_opcode
        self._efd = -1  # the eventfd behind fileno(), once asked for
        self._out_ep: select.epoll | None = None           # sockets waiting for write space, EPOLLOUT one-shot
        self._out_waiting: dict[int, "UringSock"] = {}    # fd -> socket, while it waits
        self._out_ud = self._ud(WRITABLE, None)            # the POLL_ADD on _out_ep's fd
        self._out_armed = False
        feats = impl.features
        opts = impl._opts
        self._recv_ms = not feats.get("recv_multishot", "-") and opts.multishot  # type: ignore[attr-defined]
        self._accept_ms = not feats.get("accept_multishot", "-") and opts.multishot  # type: ignore[attr-defined]
        self._bufring: BufRing | None = None
        self._starved: dict["UringSock", None] = {}        # multishot receives ended by ENOBUFS
        self._carry: list["UringSock"] = []                # readable sockets found outside poll, for the next

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
        if sock._listener:
            kind = ACCEPT if self._accept_ms else POLL
        elif self._recv_ms and not (sock._zc is not None and sock._zc.inflight):
            kind = RECV  # (error-queue zero-copy completions still owed: POLLERR readiness needed, so POLL)
        else:
            kind = POLL
        sock._rx_kind = kind
        if kind == RECV and sock._has_pipe_bytes():
            sock._rx_pipe_first = True  # a read outside the group left them: older than what the ring takes
        sock._poll_ud = self._ud(kind, sock)
        # And one serves each of its plain write tasks, one in flight at a time (zero-copy's: one each).
        sock._write_ud = self._ud(SEND, sock, False)
        sock._poll_armed = sock._out_armed = sock._out_registered = False
        if not sock._read_paused:
            self._unarmed[sock] = None
        self._inflight[sock] = 0

    def remove_sock(self, sock: "UringSock") -> None:  # type: ignore[override]
        self._check_thread(sock, "remove_sock")  # before anything changes: the socket stays whole, in its group
        self._unarmed.pop(sock, None)
        self._starved.pop(sock, None)
        if self._carry:
            # In place: a flush_dirty being served holds this very list and appends to it.
            self._carry[:] = [s for s in self._carry if s is not sock]
        if (self._inflight.get(sock, 0) or sock._send_ud) and self._ring is not None:
            self._removing.add(sock)
            try:
                self._cancel_and_wait(sock)
            finally:
                self._removing.discard(sock)
        self._inflight.pop(sock, None)
        self._ops.pop(sock._poll_ud, None)
        self._ops.pop(sock._write_ud, None)
        sock._poll_ud = sock._write_ud = 0
        sock._poll_armed = False
        if sock._rxq is not None:
            self._drop_rxq(sock)
        if sock._out_registered:
            self._out_waiting.pop(sock._fd, None)
            try:
                self._out_ep.unregister(sock._fd)  # type: ignore[union-attr]
            except OSError:
                pass
            sock._out_registered = sock._out_armed = False

    def pause(self, sock: "UringSock") -> None:  # type: ignore[override]
        self._unarmed.pop(sock, None)  # a poll in flight completes, and is not re-armed
        self._starved.pop(sock, None)
        if sock._poll_armed and sock._rx_kind != POLL and self._ring is not None:
            # A multishot would go on taking data (and buffers): cancel it; what it holds stays.
            target = sock._rx_kud if sock._rx_kind == RECV else sock._poll_ud
            self._ring.prep_cancel(target, self._ud(CANCEL, sock))

    def resume(self, sock: "UringSock") -> None:  # type: ignore[override]
        if not sock._poll_armed:
            self._unarmed[sock] = None
        # else: a multishot being cancelled; its last CQE re-arms it, the socket no longer paused

    def _drop_rxq(self, sock: "UringSock") -> None:
        """Free a departing socket's receive queue, its bytes kept in its own recv pipe first."""
        q = sock._rxq
        self._spill(sock)
        if q.end < 0:
            sock._rx_error = -q.end  # raised by its next read, after the bytes
        _bridge.rxq_free(address(q))
        sock._rxq = None
        sock._rxq_addr = 0

    def _spill(self, sock: "UringSock") -> None:
        """Copy what the socket's provided buffers hold into its own recv pipe, and recycle them."""
        if not sock._rxq.bytes:
            return
        data = _bridge.rx_drain(sock._rxq_addr)
        sock.stats.bytes_received += len(data)  # received now: reads out of the pipe are not counted again
        pipe = sock._pipe
        have = pipe.bytes_available() if pipe is not None else 0
        if pipe is None or pipe.free_space() < len(data):
            cap = max(have + len(data), pipe.capacity if pipe is not None else 0)
            pipe = pipe.resized(cap) if pipe is not None else Pipe(cap)
            sock._pipe = pipe
        off = 0
        for view in pipe.writer_get_buffer(len(data)):
            view[:] = data[off:off + len(view)]
            off += len(view)
        pipe.writer_advance(off)
        sock._rx_pipe_first = True  # older than anything received from here on

    def _cancel_and_wait(self, sock: "UringSock") -> None:
        ring = self.ring
        ring.prep_cancel_fd(sock._fd, self._ud(CANCEL, sock))
        deadline = time.monotonic() + 10.0
        backlog = self._backlog
        while self._inflight.get(sock, 0) > 0 or sock._send_ud:
            ring.submit(1, 0.1)
            backlog.extend(ring.reap())
            # One at a time, each taken out of the backlog as it is dispatched: a completion callback
            # that removes or closes this socket again waits for the rest itself, and must find them
            # there (held in this frame, they never came: it timed out once per completion).
            while (entry := self._take_op_of(sock)) is not None:
                self._dispatch(*entry, None)
            if time.monotonic() > deadline:
                raise OSError(errno.ETIMEDOUT, f"{sock!r}: io_uring did not complete its cancelled operations")

    def _take_op_of(self, sock: "UringSock") -> tuple[int, int, int] | None:
        """The backlog's oldest CQE of ``sock``'s operations, taken out of it in place (an outer
        poll may be iterating this very deque); None when it has none."""
        backlog = self._backlog
        for i, entry in enumerate(backlog):
            if self._op_sock(entry[0]) is sock:
                del backlog[i]
                return entry
        return None

    def _op_sock(self, ud: int):
        op = self._ops.get(ud)
        return op[1] if op is not None else None

    # -- sending -------------------------------------------------------------

    def _flush_dirty_py(self) -> None:
        """Start a write task for every dirty socket that has none in flight, and submit them now.

        Called outside :meth:`poll` (the group serves this after the read
        callbacks): the replies leave at once, in one ``io_uring_enter``
        for all sockets, and what completed inline (a send on a socket with
        room completes during the enter) is dispatched at once, so the
        request callbacks run here as posix's do, not in one more poll.
        Readiness found on the way is kept for the next poll.
        """
        for _ in range(FLUSH_ROUNDS):
            before = completions()
            self._prep_dirty()
            if completions() == before or not self._dirty:
                break  # else a direct send's callbacks queued more, on this socket or others
        ring = self._ring
        if ring is not None and ring.sq_pending():
            if self._efd >= 0:
                try:
                    # Before the enter, as in poll: task work queued after this signals it again (after
                    # the enter it could swallow the signal of work that no CQE shows yet).
                    os.eventfd_read(self._efd)
                except BlockingIOError:
                    pass
            backlog = self._backlog
            ring.enter(False, 0.0, backlog)  # straight into the backlog: nothing reaped is ever held elsewhere
            carry = self._carry
            while backlog:
                ud, res, flags = backlog.popleft()
                self._dispatch(ud, res, flags, carry)
            if self._dirty:
                self._prep_dirty()  # callbacks queued more: with the next enter

    def _prep_dirty_py(self, direct: bool = True) -> None:
        """Prepare a write task for every dirty socket that has none in flight.

        A socket leaves ``_dirty`` when its write task starts; the task's
        completion puts it back if requests are still queued. With
        ``direct`` (from inside poll or flush, where request callbacks may
        run) and at most DIRECT_SEND_MAX of them, each sends at once.
        """
        dirty = self._dirty
        direct = direct and len(dirty) <= DIRECT_SEND_MAX
        for sock in list(dirty):
            if sock._group_impl is not self or sock._send_ud or sock._out_armed or not sock._queued:  # type: ignore[attr-defined]
                dirty.pop(sock, None)  # (one that left this group impl, a callback moved it, is stale here)
            elif not (sock._cb_cnt or sock._closed):
                self.flush_sock(sock, False, direct)  # type: ignore[arg-type]

    def _flush_sock_py(self, sock: "UringSock", submit: bool, direct: bool | None = None,
                       full: bool = False) -> None:
        """Start the socket's write task if none is in flight; submit now if asked.

        ``direct`` (``submit`` when not given): send with sendmsg(2) first,
        the way posix does (never for zero-copy, whose completions come
        through the ring). What the kernel did not take waits for write
        space, and what callbacks queued meanwhile goes as a SEND. ``full``:
        the kernel just took less than it was offered.
        """
        if sock._send_ud or sock._out_armed or not sock._queued or sock._cb_cnt or sock in self._removing \
                or sock._group_impl is not self:  # (moved by a callback: its new group's to send)
            return
        if (submit if direct is None else direct) and sock._zc is None:
            offered = sum(req._nbytes - req._offset for req in sock._queued)
            sent = sock.stats.bytes_sent
            PosixSock._flush(sock)  # the request callbacks of what it sent run here
            if not sock._queued:
                self._dirty.pop(sock, None)
            elif not (sock._closed or sock._group_impl is not self):
                full = sock.stats.bytes_sent - sent < offered  # it took less than it was offered
                self._flush_sock_py(sock, submit, False, full)
            return
        if full:
            # A SEND on a full socket would wait in the kernel on a poll that a half-closed peer's
            # POLLRDHUP wakes for ever: wait in the write-space set, as a short SEND's completion does.
            self._wait_writable(sock)  # first: a failure leaves it dirty
            self._dirty.pop(sock, None)
            if submit:
                (self._ring or self.ring).submit()  # the write-space poll, if this armed it, goes now
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
            sock._send_addr = address(send)
        zc = sock._zc is not None and self._zc_op and total >= sock._impl_opts.zerocopy_threshold
        send.zerocopy = zc
        ud = send.user_data = self._ud(SEND, sock, True) if zc else sock._write_ud
        ring = self._ring or self.ring
        ring.prep_send_bufs(sock._send_addr, iovs)
        sock._send_iovs = iovs  # the kernel reads these (slices included) until the CQE
        sock._send_total = total
        sock._send_ud = ud
        self._ring_sends += 1
        self._dirty.pop(sock, None)
        if submit:
            sock.stats.syscalls += 1
            ring.submit()

    # -- the poll --------------------------------------------------------------

    def _poll_py(self, max_events: int, timeout: float) -> list["UringSock"]:
        if self._owner and self._owner != threading.get_ident():
            raise wrong_thread(self, "poll")
        ring = self._ring or self.ring
        if self._efd >= 0:
            try:
                os.eventfd_read(self._efd)  # reset; what completes from here on signals it again
            except BlockingIOError:
                pass
        before = completions()  # before the first prep: a direct send there completes requests
        if self._dirty:
            self._prep_dirty()
        ready = self._carry  # what flush_dirty found readable since the last poll
        self._carry = []
        backlog = self._backlog
        deadline = 0.0
        while True:
            self._arm_polls()
            wait = timeout > 0 and not ready and not backlog and completions() == before
            if wait and not deadline:
                deadline = time.monotonic() + timeout
            ring.enter(wait, timeout, backlog)  # waits only while the CQ is empty; reaps into the backlog
            while backlog:
                ud, res, flags = backlog.popleft()
                self._dispatch(ud, res, flags, ready)
            if self._dirty:
                self._prep_dirty()  # callbacks queued more, or write space came: sent with the next enter
            if ready or not wait or completions() != before:
                return ready
            # Only completions the caller cannot see (a paused socket's poll, a write-space poll
            # whose send is now prepared): wait on for what is left of the timeout.
            timeout = deadline - time.monotonic()
            if timeout <= 0.0005:
                return ready

    def _arm_polls(self) -> None:
        """Prepare the readiness polls of sockets not armed yet (and the orphanage's)."""
        orphanage = self.impl.orphanage  # type: ignore[attr-defined]
        if not (self._unarmed or self._starved or (len(orphanage) and not self._orphans_armed)):
            return  # the common case once every socket's multishot is armed
        ring = self._ring or self.ring
        inflight = self._inflight
        if self._starved:
            self._feed_starved()
        for sock in self._unarmed:
            kind = sock._rx_kind
            if kind == RECV:
                q = sock._rxq
                if q is None:
                    q = self._new_rxq(sock)
                    if q is None:  # no buffer ring after all: this socket polls
                        ring.prep_poll_add(sock._fd, POLL_MASK, sock._poll_ud)
                        sock._poll_armed = True
                        inflight[sock] += 1
                        continue
                if q.end:
                    continue  # EOF or an error ends its stream: nothing more to receive
                if q.bulk:
                    ring.prep_rxq_poll(q)  # direct receive: no buffers needed
                elif not self._bufring.avail():  # type: ignore[union-attr]
                    self._starved[sock] = None
                    continue
                else:
                    ring.prep_recv_multishot(q)
            elif kind == ACCEPT:
                ring.prep_accept_multishot(sock._fd, _ACCEPT_FLAGS, sock._poll_ud)
            else:
                ring.prep_poll_add(sock._fd, POLL_MASK, sock._poll_ud)
            sock._poll_armed = True
            inflight[sock] += 1
        self._unarmed.clear()
        if len(orphanage) and not self._orphans_armed:
            ring.prep_poll_add(orphanage.fileno(), select.POLLIN, self._ud(ORPHANS, None))
            self._orphans_armed = True

    def _new_rxq(self, sock: "UringSock"):
        """The socket's receive queue, made with the group's buffer ring (made on first use)."""
        br = self._bufring
        if br is None:
            opts = self.impl._opts
            try:
                br = self._bufring = BufRing(self.ring, BGID, opts.pbuf_entries, opts.pbuf_size)  # type: ignore[attr-defined]
                br.set_bundle(not self.impl.features.get("bundle", "-"))  # type: ignore[attr-defined]
            except OSError as exc:
                logger.warning("uring: no provided-buffer ring (%s); receiving by poll and recv(2)", exc)
                self._recv_ms = False
                for s in self.socks:
                    if getattr(s, "_rx_kind", POLL) == RECV:
                        s._rx_kind = POLL  # type: ignore[attr-defined]
                        self._ops[s._poll_ud] = (POLL, s, None)  # type: ignore[attr-defined]
                return None
        q = sock._rxq = br.rxq(sock._fd, sock._poll_ud)
        q.adaptive = bool(self.impl._opts.direct_recv)  # type: ignore[attr-defined]
        sock._rxq_addr = address(q)
        sock._rx_kud = lib.ni_rxq_user_data(q)
        if _compiled:
            _bridge.rxq_bind(sock._rxq_addr, sock)  # type: ignore[union-attr]  # its reports filed in C
        return q

    def _feed_starved(self) -> None:
        """Re-arm the receives that ran out of buffers, once there are buffers again."""
        br = self._bufring
        if br is None:
            return
        if not br.avail():
            # Buffers held by paused sockets would stay held until they resume: move their bytes
            # into their own pipes, so the sockets that are read can go on receiving.
            for sock in self.socks:
                if sock._read_paused and getattr(sock, "_rxq", None) is not None and sock._rxq.bytes:  # type: ignore[attr-defined]
                    self._spill(sock)  # type: ignore[arg-type]
            if not br.avail():
                return
        self._unarmed.update(self._starved)
        self._starved.clear()

    def before_wait(self) -> bool:
        ring = self._ring
        if ring is None:
            return False
        self._check_thread(self, "poll")
        if self._dirty:
            self._prep_dirty(False)  # no sendmsg here: it would run request callbacks outside poll
        self._arm_polls()
        signalled = False
        if self._efd >= 0:
            try:
                os.eventfd_read(self._efd)
                signalled = True  # since the last reset: completions, or task work for an enter to run
            except BlockingIOError:
                pass
        if signalled or ring.sq_pending():
            ring.submit(0)  # completions from here on signal the eventfd
            if signalled:
                self._backlog.extend(ring.reap())  # what it was signalled for, if anything, is poll's
        busy = bool(self._backlog) or bool(self._carry) or ring.cq_ready() > 0
        if busy and signalled:
            os.eventfd_write(self._efd, 1)  # a caller that waits on fileno() must not sleep through it
        return busy

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
        elif kind == RECV:
            if not flags & F_MORE:  # the multishot ended (EOF, error, ENOBUFS, cancelled...)
                self._inflight[sock] = self._inflight.get(sock, 1) - 1
                sock._poll_armed = False
            if sock._group_impl is not self or sock in self._removing or sock._closed or sock._read_paused:
                return
            q: Any = sock._rxq
            if not flags & F_MORE and not q.end:
                if q.nobufs and not q.bulk:
                    self._starved[sock] = None
                else:
                    self._unarmed[sock] = None  # (in the mode its reads want)
            elif q.armed and q.bulk != q.poll and not q.switching and self._ring is not None:
                # Its reads want the other mode: end what is armed; its last CQE re-arms it so.
                self._ring.prep_cancel(sock._rx_kud, self._ud(CANCEL, sock))
                q.switching = 1
            if ready is not None and lib.ni_rxq_readable(q):
                ready.append(sock)
        elif kind == ACCEPT:
            self._on_accept(sock, res, flags, ready)
        elif kind == WRITABLE:
            self._out_armed = False
            self._writable()
        elif kind == CANCEL:
            del self._ops[ud]
        elif kind == ORPHANS:
            del self._ops[ud]
            self._orphans_armed = False
            self.impl.orphanage.reap()  # type: ignore[attr-defined]

    def _on_accept(self, sock: "UringSock", res: int, flags: int, ready: list | None) -> None:
        if not flags & F_MORE:
            self._inflight[sock] = self._inflight.get(sock, 1) - 1
            sock._poll_armed = False
        if res >= 0:
            if sock._closed:
                os.close(res)
            else:
                sock._accepted.append(res)  # accept() hands it out, in or out of the group
        if sock._group_impl is not self or sock in self._removing or sock._closed or sock._read_paused:
            return
        if not flags & F_MORE:
            if res < 0 and res not in (-errno.ECANCELED, -errno.EINTR):
                # Not a per-connection failure the kernel would hide: poll for readiness from now on.
                logger.debug("%r: multishot accept ended: %s; polling instead", sock, errno.errorcode.get(-res, res))
                sock._rx_kind = POLL
                self._ops[sock._poll_ud] = (POLL, sock, None)
            self._unarmed[sock] = None
        if ready is not None and sock._accepted:
            ready.append(sock)

    def _on_send(self, ud: int, sock: "UringSock", zc: bool, res: int, flags: int) -> None:
        sock._send_ud = 0
        sock._send_iovs = None
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
        elif zc:
            del self._ops[ud]
            for req in touched:
                sock._zc_released(req)
        # (a plain send's entry is the socket's _write_ud: it stays for the next one)
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

    # The hot four, compiled (bridge.c) for the compiled core's sockets; the methods above are their
    # reference, run under NETIMPL_NATIVE=0, and the compiled ones' slow paths.
    if _compiled:
        poll = _as_method(_bridge.poll)
        flush_dirty = _as_method(_bridge.flush_dirty)
        _prep_dirty = _as_method(_bridge.prep_dirty)
        flush_sock = _as_method(_bridge.flush_sock)
    else:
        poll = _poll_py  # type: ignore[assignment]
        flush_dirty = _flush_dirty_py  # type: ignore[assignment]
        _prep_dirty = _prep_dirty_py
        flush_sock = _flush_sock_py

    def _zc_owed(self) -> bool:
        """Zero-copy sends' entries are left (a plain send's, a socket's _write_ud, goes with its socket)."""
        return any(op[0] == SEND and op[2] is not False for op in self._ops.values())

    def close(self) -> None:
        ring = self._ring
        if ring is None:
            return
        deadline = time.monotonic() + CLOSE_WAIT
        while self._zc_owed() and time.monotonic() < deadline:
            ring.submit(1, 0.05)
            for ud, res, flags in ring.reap():
                self._dispatch(ud, res, flags, None)
        if self._zc_owed():
            # Freeing the ring would not free the pages; but its owed callbacks could never run.
            logger.warning("uring group closed with zero-copy notifications still owed; keeping its ring")
            _abandoned.append(ring)
        else:
            self._ring = None  # first: the compiled poll trusts a Ring that is _ring to be open
            if self._bufring is not None:
                self._bufring.close()
                self._bufring = None
            ring.close()
        self._ring = None
        if self._out_ep is not None:
            self._out_ep.close()
            self._out_ep = None
        if self._efd >= 0:
            os.close(self._efd)
            self._efd = -1
