"""PosixGroupImpl: the posix sockets of a group, in one epoll set.

Facts about epoll that shape it (epoll(7)):

* Level-triggered ``EPOLLIN``: a socket whose data the application left in
  the kernel is reported again by the next ``epoll_wait``, so the generic
  pending-recv list need only remember sockets whose *recv pipe* holds
  data; nothing the kernel holds can be forgotten.
* ``EPOLLERR`` is always reported; on a zero-copy socket it mostly means
  "notifications on the error queue", which is not readability, so such a
  socket is reported readable only for ``EPOLLIN``/``EPOLLHUP``/``EPOLLRDHUP``.
* Without ``EPOLLOUT`` a socket whose send buffer was full would wait for the
  whole ``timeout`` before its queue moved again; so while ``poll`` is about to
  sleep, sockets with queued data are also watched for ``EPOLLOUT``.
* ``EPOLLERR`` and ``EPOLLHUP`` are reported whatever the mask says, so a
  socket paused for reading whose peer is gone would wake every wait. A
  paused socket is therefore armed ``EPOLLONESHOT``: each event it raises
  (write space, a zero-copy notification) is handled and the socket re-armed,
  except after a hang-up or an error, which only its resume will report.

With the compiled core, a group whose only impl is posix is polled by
``netimpl._native.group_poll`` (the loop of :meth:`PosixGroupImpl.poll` and
of ``SockGroup._serve`` in C); it hands every event other than plain
readability to :meth:`PosixGroupImpl._event` and arming to
:meth:`_watch_writable`, so those exist once, here.
"""

from __future__ import annotations

import select
from typing import TYPE_CHECKING

from ..accel import PosixGroupState, native
from ..impl import GroupImpl
from ..sock import completions

if TYPE_CHECKING:
    from . import PosixImpl
    from .sock import PosixSock

EPOLLIN = select.EPOLLIN
EPOLLOUT = select.EPOLLOUT
EPOLLERR = select.EPOLLERR
EPOLLHUP = select.EPOLLHUP
EPOLLONESHOT = select.EPOLLONESHOT
_READABLE = select.EPOLLIN | select.EPOLLHUP | select.EPOLLRDHUP
_WATCH = select.EPOLLIN | select.EPOLLERR | select.EPOLLRDHUP


class PosixGroupImpl(PosixGroupState, GroupImpl):
    """The posix part of a :class:`netimpl.SockGroup`."""

    def __init__(self, impl: "PosixImpl") -> None:
        super().__init__(impl)
        self._ep = select.epoll()
        self._epfd = self._ep.fileno()  # for the compiled poll (netimpl._native.group_poll)
        self._fds: dict[int, "PosixSock"] = {}
        self._want_out: set["PosixSock"] = set()
        self._orphanage = impl.orphanage
        self._orphan_fd = impl.orphanage.fileno()
        self._ep.register(self._orphan_fd, EPOLLIN)

    def fileno(self) -> int:
        return self._ep.fileno()

    def add_sock(self, sock: "PosixSock") -> None:  # type: ignore[override]
        self._ep.register(sock._fd, _WATCH)
        self._fds[sock._fd] = sock

    def remove_sock(self, sock: "PosixSock") -> None:  # type: ignore[override]
        if self._fds.pop(sock._fd, None) is not None:
            try:
                self._ep.unregister(sock._fd)
            except OSError:  # already closed: the kernel dropped it
                pass
        self._want_out.discard(sock)

    def poll(self, max_events: int, timeout: float) -> list["PosixSock"]:  # type: ignore[override]
        if self._dirty:
            before = completions()
            self.flush_dirty()
            if completions() != before:
                timeout = 0.0  # callbacks ran: let the caller act on them first
        if timeout > 0 or self._want_out:
            self._watch_writable()
        fds = self._fds
        events = self._ep.poll(timeout, max(len(fds), 1) + 1)
        ready: list["PosixSock"] = []
        for fd, ev in events:
            sock = fds.get(fd)
            if sock is None:
                if fd == self._orphan_fd:
                    self._orphanage.reap()
                continue
            if self._event(sock, ev):
                ready.append(sock)
        return ready

    def _event(self, sock: "PosixSock", ev: int) -> bool:
        """Handle one epoll event of ``sock``; True when it makes the socket readable for its callback.

        The compiled poll handles plain readability itself and calls this for everything else.
        """
        if ev & EPOLLERR and sock._zc is not None:
            sock._check_zcopy()
            if sock._closed:
                return False
        if ev & EPOLLOUT and sock._queued and not sock._cb_cnt:
            sock._flush()
            if not sock._queued:
                self._dirty.pop(sock, None)
            if sock._closed:
                return False
        if sock._read_paused:
            # Armed one-shot: re-arm unless the peer is gone (resume reports that).
            if not (ev & EPOLLHUP or (ev & EPOLLERR and sock._zc is None)) and self._fds.get(sock._fd) is sock:
                self._arm(sock)
            return False
        return bool(ev & _READABLE or (ev & EPOLLERR and sock._zc is None))

    def before_wait(self) -> bool:
        if self._dirty or self._want_out:
            self._watch_writable()
        return False

    def _arm(self, sock: "PosixSock") -> None:
        """Set the socket's epoll mask from its state: paused or not, waiting for write space or not."""
        out = EPOLLOUT if sock in self._want_out else 0
        self._ep.modify(sock._fd, (EPOLLONESHOT | out) if sock._read_paused else (_WATCH | out))

    def pause(self, sock: "PosixSock") -> None:  # type: ignore[override]
        self._arm(sock)

    def resume(self, sock: "PosixSock") -> None:  # type: ignore[override]
        self._arm(sock)  # level-triggered: what waits in the kernel is reported by the next wait

    def _watch_writable(self) -> None:
        want = self._want_out
        dirty = self._dirty
        for sock in [s for s in want if s not in dirty]:
            want.discard(sock)
            if not sock._closed:
                self._arm(sock)
        for sock in dirty:  # type: ignore[assignment]
            if sock not in want and not sock._closed:
                want.add(sock)
                self._arm(sock)

    def close(self) -> None:
        self._ep.close()
        self._fds.clear()


if native is not None:
    native.set_posix_group_type(PosixGroupImpl)  # a group of posix sockets alone is polled in C
