"""SockGroup: one poll loop over sockets of any backend.

A group keeps one :class:`~netimpl.impl.GroupImpl` per backend in use. Its
``poll`` asks each to flush and reap, collects the sockets they report
readable, and serves the *pending-recv list*, SPDK's ``socks_with_data``,
shared by every backend: a socket stays on it while its recv pipe holds
data (the kernel will not signal those bytes again), at most ``max_events``
sockets are served per poll, and each served socket goes to the back, so
with more ready sockets than ``max_events`` each is served within
``ceil(ready / max_events)`` polls.
"""

from __future__ import annotations

import errno
import math
import os
import select
import time
from typing import TYPE_CHECKING, Any, Callable

from ..accel import GroupCore, ReadyList, native
from ..errors import callback_errors, ebadf, logger, oserror
from ..stats import GroupStatsType
from .placement import placement_map

if TYPE_CHECKING:
    from ..impl import GroupImpl
    from ..sock import Sock

ReadCallback = Callable[["SockGroup", "Sock"], Any]

__all__ = ["SockGroup", "optimal_group"]

_NUMBER = (int, float)


def _check_poll_args(max_events: object, timeout: object) -> None:
    """Raise the exception that names what is wrong with poll's arguments."""
    if isinstance(max_events, bool) or not isinstance(max_events, int):
        raise TypeError(f"max_events must be an int, not {max_events!r}")
    if max_events <= 0:
        raise ValueError(f"max_events must be positive, not {max_events!r}")
    if isinstance(timeout, bool) or not isinstance(timeout, _NUMBER) or math.isnan(timeout):
        raise TypeError(f"timeout must be a number of seconds, not {timeout!r}")
    if timeout < 0:
        raise ValueError(f"timeout must be >= 0, not {timeout!r}")


class SockGroup(GroupCore):
    """Polls sockets of any backend; the contract is docs/api.md ("SockGroup")."""

    def __init__(self, ctx: Any = None) -> None:
        self.ctx = ctx
        self.stats = GroupStatsType()
        self._impls: dict[str, "GroupImpl"] = {}
        self._socks: dict["Sock", ReadCallback] = {}
        self._ready: dict["Sock", None] = ReadyList()  # the pending-recv list, in service order
        self._closed = False
        self._waiter: select.epoll | None = None  # over the group impls' fds (and _wake_fd): mixed waits, fileno()
        self._wake_fd = -1        # eventfd: set while poll has work of its own (fileno() asked for)
        self._wake_set = False
        self._busy = False        # poll has work to do at once (kept up to date once fileno() was asked for)
        self._polling = False
        self._driver: object = None  # the netimpl.aio.run task serving the group, if any

    def __repr__(self) -> str:
        return f"<SockGroup impls={list(self._impls)} socks={len(self._socks)} ready={len(self._ready)}>"

    @property
    def socks(self) -> list["Sock"]:
        """The sockets in the group, in the order they were added."""
        return list(self._socks)

    def add_sock(self, sock: "Sock", cb: ReadCallback) -> None:
        """Watch ``sock``; ``cb(group, sock)`` runs from :meth:`poll` when it is readable."""
        from ..sock import Sock

        if self._closed:
            raise ebadf()
        if not isinstance(sock, Sock):
            raise TypeError(f"add_sock takes a netimpl Sock, not {sock!r:.60}")
        if not callable(cb):
            raise TypeError(f"add_sock callback must be callable, not {cb!r:.60}")
        if sock._closed:
            raise ebadf()
        if sock._group is self:
            raise ValueError(f"{sock!r} is already in this group")
        if sock._group is not None:
            raise ValueError(f"{sock!r} is in another group")
        gi = self._impls.get(sock.impl_name)
        if gi is None:
            gi = sock._impl.group_impl_create()
            self._impls[sock.impl_name] = gi
            self.stats.impls.append(sock.impl_name)
            if self._waiter is not None:
                self._waiter.register(gi.fileno(), select.EPOLLIN)
        gi.add_sock(sock)
        gi.socks[sock] = None
        sock._group = self
        sock._group_impl = gi
        sock._read_cb = cb
        self._socks[sock] = cb
        if sock._queued:
            gi._dirty[sock] = None
        if sock._has_buffered():
            self._ready[sock] = None
        pid = sock.placement_id
        if pid >= 0:
            if placement_map.insert(pid, self):
                sock._group_pid = pid
            else:
                logger.debug("%r: placement id %d is served by another group", sock, pid)

    def remove_sock(self, sock: "Sock") -> None:
        """Stop watching ``sock``; its queued, unsent requests complete with ECANCELED.

        A pause (:meth:`pause_reading`) is forgotten with it.
        """
        self._member(sock)
        self._detach(sock)
        sock._fail_queued(errno.ECANCELED)
        if callback_errors.pending and sock._cb_cnt == 0:
            callback_errors.reraise()

    def pause_reading(self, sock: "Sock") -> None:
        """Stop calling ``sock``'s read callback (a listener's: no accept callback) until resumed.

        While paused, the socket's readiness neither calls its callback nor
        cuts a :meth:`poll` timeout short, so a paused socket with data
        waiting costs no CPU; its writes and request completions go on.
        The way to apply backpressure: pause while
        :attr:`Sock.queued_bytes` is over a bound, resume when it drains.
        Pausing a paused socket does nothing (one resume undoes any number
        of pauses). ``ValueError`` if ``sock`` is not in this group.
        """
        self._member(sock)
        if sock._read_paused:
            return
        gi: "GroupImpl" = sock._group_impl  # type: ignore[assignment]
        gi._check_thread(sock, "pause_reading")
        sock._read_paused = True
        self._ready.pop(sock, None)
        gi.pause(sock)

    def resume_reading(self, sock: "Sock") -> None:
        """Undo :meth:`pause_reading`: a following :meth:`poll` serves whatever waited.

        Data already in the recv pipe or in the kernel is served without a
        new kernel event. Resuming a socket that is not paused does nothing;
        ``ValueError`` if ``sock`` is not in this group.
        """
        self._member(sock)
        if not sock._read_paused:
            return
        gi: "GroupImpl" = sock._group_impl  # type: ignore[assignment]
        gi._check_thread(sock, "resume_reading")
        sock._read_paused = False
        gi.resume(sock)
        if sock._has_buffered():
            self._ready[sock] = None
        if not self._polling:
            self._work_arrived()

    def _member(self, sock: "Sock") -> None:
        if getattr(sock, "_group", None) is not self:
            raise ValueError(f"{sock!r} is not in this group")

    def _detach(self, sock: "Sock") -> None:
        """Take ``sock`` out of the group; requests are the caller's business."""
        gi = sock._group_impl
        if gi is not None:
            gi.remove_sock(sock)
            gi.socks.pop(sock, None)
            gi._dirty.pop(sock, None)
        self._socks.pop(sock, None)
        self._ready.pop(sock, None)
        sock._group = None
        sock._group_impl = None
        sock._read_cb = None
        sock._read_paused = False
        if sock._group_pid >= 0:
            placement_map.release(sock._group_pid, self)
            sock._group_pid = -1

    def poll(self, max_events: int = 32, timeout: float = 0.0) -> int:
        """Flush, reap completions, then serve up to ``max_events`` readable sockets.

        Waits up to ``timeout`` seconds in the kernel when nothing is ready;
        0 never blocks. What the read callbacks queue is flushed before
        returning: posix sends it at once; uring prepares it, and the next
        poll's single ``io_uring_enter`` submits it (keep polling). Returns
        the number of read callbacks made.

        Raises what a read or request callback let out (the first, once the
        group is consistent again; the rest are logged): a read callback that
        does not catch a receive error (``ConnectionResetError`` from
        ``recv_into``) ends this poll with it, and the remaining ready sockets
        are served by the next poll; the group stays usable. ``TypeError`` /
        ``ValueError`` for bad arguments, ``OSError(EBADF)`` once closed,
        ``OSError(EEXIST)`` from a thread that does not drive a uring group.
        Send errors never raise: they complete their requests.
        """
        if not (type(max_events) is int and max_events > 0 and type(timeout) in _NUMBER and timeout >= 0):
            _check_poll_args(max_events, timeout)
        if self._closed:
            raise ebadf()
        if self._wake_fd >= 0:
            return self._poll_exported(max_events, timeout)
        self.stats.polls += 1
        ready = self._ready
        wait = 0.0 if ready else float(timeout)
        impls = self._impls
        if len(impls) == 1:
            for gi in impls.values():
                self._found(gi.poll(max_events, wait))
        elif impls:
            self._poll_many(max_events, wait)
        elif wait > 0:
            time.sleep(wait)
        if callback_errors.pending:
            callback_errors.reraise()
        return self._serve(max_events)

    if native is not None:
        #: The reference, and the path of groups the compiled poll does not serve itself.
        _poll_py = poll
        #: Compiled (netimpl._native.group_poll): the serving loop in C, and a posix group impl's
        #: epoll in C too (Python runs only the callbacks); a poll that must wait on several
        #: backends or on the exported fd goes to _poll_py.
        poll = native.as_method(native.group_poll)

    def _poll_exported(self, max_events: int, timeout: float) -> int:
        """poll, keeping :meth:`fileno`'s promise: afterwards its fd is readable exactly when
        there is work (a kernel event, or work of poll's own)."""
        self._polling = True
        try:
            self.stats.polls += 1
            ready = self._ready
            wait = 0.0 if ready or self._busy else float(timeout)
            if self._impls:
                self._poll_many(max_events, wait)
            elif wait > 0:
                time.sleep(wait)
            if callback_errors.pending:
                callback_errors.reraise()
            return self._serve(max_events)
        finally:
            self._polling = False
            self._update_busy()

    def _update_busy(self) -> None:
        busy = bool(self._ready)
        for gi in self._impls.values():
            if gi.before_wait():
                busy = True
        self._busy = busy
        if busy != self._wake_set:
            self._wake_set = busy
            if busy:
                os.eventfd_write(self._wake_fd, 1)
            else:
                try:
                    os.eventfd_read(self._wake_fd)
                except BlockingIOError:
                    pass

    def _work_arrived(self) -> None:
        """Work came outside poll that no kernel event announces (a request queued or a socket
        resumed outside a callback): make :meth:`fileno` say so."""
        if self._wake_fd >= 0:
            self._update_busy()

    def fileno(self) -> int:
        """One fd, readable while :meth:`poll` has something to do (SPDK's group interrupt fd).

        It polls readable while the kernel holds events for the group (readable
        unpaused sockets, pending connections, send and zero-copy completions,
        sockets whose queued requests the kernel can now take) and while poll
        has work of its own (recv-pipe data, a socket just resumed with data
        waiting, submissions prepared for a uring ring). An idle, fully served
        group's fd is not readable. It is the same fd from the first call
        until :meth:`close`: an epoll set over each backend's own fd (posix:
        its epoll; uring: an eventfd registered with the ring, since a
        DEFER_TASKRUN ring's fd wakes no poller) and an eventfd of the group's.
        Wait on it for reading, then call ``poll(timeout=0)``; see :mod:`netimpl.aio`.
        """
        if self._closed:
            raise ebadf()
        if self._wake_fd < 0:
            waiter = self._waiter_get()
            wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            try:
                waiter.register(wake, select.EPOLLIN)
            except BaseException:
                os.close(wake)
                raise
            self._wake_fd = wake
            self._update_busy()
        return self._waiter.fileno()  # type: ignore[union-attr]

    def _waiter_get(self) -> select.epoll:
        waiter = self._waiter
        if waiter is None:
            waiter = select.epoll()
            try:
                for gi in self._impls.values():
                    waiter.register(gi.fileno(), select.EPOLLIN)
            except BaseException:
                waiter.close()
                raise
            self._waiter = waiter
        return waiter

    def _found(self, socks: "list[Sock]") -> bool:
        """Put sockets a group impl found readable on the pending-recv list, those still in this
        group (a callback run on the way, a send's completion, may have removed one); True if any
        was put there."""
        ready = self._ready
        found = False
        for sock in socks:
            if sock._group is self:
                ready[sock] = None
                found = True
        return found

    def _serve(self, max_events: int) -> int:
        ready = self._ready
        served = 0
        while served < max_events and ready:
            sock = ready.popfirst()
            cb = sock._read_cb
            if sock._group is not self or sock._read_paused or cb is None:
                continue
            served += 1
            try:
                cb(self, sock)
            except BaseException:
                self._requeue(sock)
                self.stats.callbacks += served
                raise
            self._requeue(sock)
        self.stats.callbacks += served
        if served:
            # What the callbacks queued goes out now, not at the next poll: a reply
            # leaves before the caller's loop does anything else (QD1 latency).
            for gi in list(self._impls.values()):
                if gi._dirty:
                    gi.flush_dirty()
        if callback_errors.pending:
            callback_errors.reraise()
        return served

    def _requeue(self, sock: "Sock") -> None:
        # Back of the list while the pipe holds data; otherwise the kernel will say.
        if sock._group is self and not sock._read_paused and sock._has_buffered():
            self._ready[sock] = None

    def _poll_many(self, max_events: int, wait: float) -> None:
        found = False
        for gi in list(self._impls.values()):
            found = self._found(gi.poll(max_events, 0.0)) or found
        if found or wait <= 0:
            return
        for gi in self._impls.values():
            gi.before_wait()  # arrange that everything pending wakes the waiter
        if self._waiter_get().poll(wait, 1):
            for gi in list(self._impls.values()):
                self._found(gi.poll(max_events, 0.0))

    def _waiter_close(self) -> None:
        if self._waiter is not None:
            self._waiter.close()
            self._waiter = None
        if self._wake_fd >= 0:
            os.close(self._wake_fd)
            self._wake_fd = -1

    def close(self) -> None:
        """Release the group: ``OSError(EBUSY)`` while sockets remain; idempotent once empty."""
        if self._closed:
            return
        if self._socks:
            raise oserror(errno.EBUSY, f"{len(self._socks)} sockets are still in the group")
        self._closed = True
        self._ready.clear()  # what is left there is stale (sockets that left it): let them go
        self._waiter_close()
        for gi in self._impls.values():
            gi.close()
        self._impls.clear()
        placement_map.forget_group(self)

    def __enter__(self) -> "SockGroup":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def optimal_group(sock: "Sock", hint: SockGroup | None = None) -> SockGroup | None:
    """The group that already serves sockets with ``sock``'s placement id.

    When no group does and ``hint`` is given, the id is bound to ``hint``.
    """
    return placement_map.lookup(sock.placement_id, hint)
