"""The net-impl interface: what a backend implements, drawn once.

This is the Python counterpart of SPDK's ``struct spdk_net_impl``. Its
socket-level half lives on :class:`netimpl.sock.Sock` (the methods marked
*backend* there); the rest is here:

* :class:`NetImpl` creates sockets (``listen``, ``connect``), group impls
  (``group_impl_create``), holds the backend's options and answers, by a
  runtime probe run once and lazily, whether it can work on this machine.
* :class:`GroupImpl` is one backend's share of a :class:`netimpl.SockGroup`:
  it watches its sockets, flushes their queues and reaps completions.

The generic layer talks to backends only through these classes; a backend
registers an instance with :func:`netimpl.register`.
"""

from __future__ import annotations

import abc
import threading
from typing import TYPE_CHECKING, ClassVar

from .errors import NetImplError, wrong_thread
from .accel import DirtyList, GroupImplCore, flush_dirty as _flush_dirty
from .options import ImplOpts, SockOpts

if TYPE_CHECKING:
    from .sock import Sock

__all__ = ["NetImpl", "GroupImpl"]


class NetImpl(abc.ABC):
    """A backend. Subclasses set :attr:`name` and implement the abstract methods."""

    name: ClassVar[str]
    opts_type: ClassVar[type[ImplOpts]] = ImplOpts

    def __init__(self) -> None:
        self._opts = self.opts_type()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"

    def probe(self) -> str:
        """Whether this backend works here: ``''`` if it does, else why not, in words a user can act on.

        Called once, lazily, by the registry; may make system calls. Must not raise.
        """
        return ""

    def get_opts(self) -> ImplOpts:
        """A copy of the backend's options."""
        return self._opts.copy()

    def set_opts(self, opts: ImplOpts) -> None:
        """Replace the options (already validated); sockets created afterwards use them."""
        if not isinstance(opts, self.opts_type):
            raise TypeError(f"{self.name} takes {self.opts_type.__name__}, not {type(opts).__name__}")
        self._opts = opts.copy()

    @abc.abstractmethod
    def listen(self, host: str, port: int, opts: SockOpts) -> "Sock":
        """A bound, listening, non-blocking socket (backlog 512). Raises ``OSError``."""

    @abc.abstractmethod
    def connect(self, host: str, port: int, opts: SockOpts) -> "Sock":
        """A connected, non-blocking socket. Raises ``OSError`` (``ConnectionRefusedError``, ...)."""

    def listen_unix(self, path: str | bytes, opts: SockOpts) -> "Sock":
        """A listening, non-blocking Unix-domain socket at ``path``; a backend without them refuses."""
        raise NetImplError(f"backend {self.name!r} has no Unix-domain sockets")

    def connect_unix(self, path: str | bytes, opts: SockOpts) -> "Sock":
        """A Unix-domain socket connected to ``path``; a backend without them refuses."""
        raise NetImplError(f"backend {self.name!r} has no Unix-domain sockets")

    def listen_fd(self, fd: int, opts: SockOpts) -> "Sock":
        """A Sock over ``fd``, a socket already listening (socket activation); a backend without
        kernel sockets refuses."""
        raise NetImplError(f"backend {self.name!r} cannot take a listening fd")

    @abc.abstractmethod
    def group_impl_create(self) -> "GroupImpl":
        """A new, empty group impl of this backend."""


class GroupImpl(GroupImplCore, abc.ABC):
    """One backend's part of a :class:`netimpl.SockGroup`.

    ``_dirty`` holds the sockets with queued requests; the generic layer adds
    a socket to it when its queue becomes non-empty, so ``poll`` flushes only
    those instead of walking every socket (on the compiled core a
    ``DirtyList``, linked through the sockets; a dict in the Python twin). ``_owner`` is the thread
    (``threading.get_ident()``) that alone may drive this group impl and its
    sockets' writes, or 0 when any thread may; it is checked before a call
    changes anything. Both are fields of :class:`netimpl.accel.GroupImplCore`
    where the core is compiled.
    """

    def __init__(self, impl: NetImpl) -> None:
        self.impl = impl
        self.socks: dict["Sock", None] = {}
        self._dirty: dict["Sock", None] = DirtyList()

    def _check_thread(self, what: object, call: str = "this call") -> None:
        """Raise ``OSError(EEXIST)`` when called from a thread other than :attr:`_owner`."""
        if self._owner and self._owner != threading.get_ident():
            raise wrong_thread(what, call)

    @abc.abstractmethod
    def add_sock(self, sock: "Sock") -> None:
        """Start watching ``sock`` for readability; raises ``OSError`` on failure."""

    @abc.abstractmethod
    def remove_sock(self, sock: "Sock") -> None:
        """Stop watching ``sock``; nothing of it may be referenced afterwards. Never raises."""

    @abc.abstractmethod
    def pause(self, sock: "Sock") -> None:
        """Stop reporting ``sock`` readable, and stop letting its readiness end a wait.

        Its writes, write-readiness and (zero-copy) completions go on; a
        socket whose peer has gone must not make :meth:`poll` spin while
        paused. ``sock._read_paused`` is already True.
        """

    @abc.abstractmethod
    def resume(self, sock: "Sock") -> None:
        """Report ``sock`` again; data waiting in the kernel is reported by the next :meth:`poll`
        without a new kernel event. ``sock._read_paused`` is already False."""

    @abc.abstractmethod
    def poll(self, max_events: int, timeout: float) -> list["Sock"]:
        """Flush dirty sockets, reap completions (running request callbacks),
        wait up to ``timeout`` seconds for readiness if nothing is ready, and
        return the sockets that became readable (data, EOF or error)."""

    def before_wait(self) -> bool:
        """The group's caller is about to wait on :meth:`fileno`: hand the kernel whatever is
        prepared and arrange that everything pending wakes that fd (write space for queued
        requests, say). True when :meth:`poll` has work to do at once without a kernel event."""
        return False

    @abc.abstractmethod
    def fileno(self) -> int:
        """An fd that polls readable when :meth:`poll` has something to report
        (lets a group with several backends sleep on all of them)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the group impl; it holds no sockets by then."""

    if TYPE_CHECKING:
        def flush_dirty(self) -> None:
            """Flush every socket with queued requests (deferred ones stay dirty)."""
    else:
        # compiled where it is built (netimpl.accel)
        flush_dirty = _flush_dirty
