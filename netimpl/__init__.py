"""netimpl: an SPDK-style pluggable socket layer for storage targets.

One socket and sock-group interface, several backends chosen by priority:
``posix`` (epoll, recv pipes, batched ``sendmsg``, MSG_ZEROCOPY) everywhere,
faster ones where the kernel allows. The API reference, with what every
call raises, the thread rules and the zero-copy and close guarantees, is
``docs/api.md`` in the source tree and the source distribution.

    >>> import netimpl
    >>> lsock = netimpl.listen("127.0.0.1", 0)
    >>> group = netimpl.SockGroup()
"""

from __future__ import annotations

import os
from .addr import check_host_port
from .errors import NetImplError
from .group import SockGroup, optimal_group
from .impl import GroupImpl, NetImpl
from .options import ImplOpts, SockOpts
from .pipe import Pipe
from .registry import (ImplInfo, default_impl, get_impl_opts, impls, register, set_default_impl,
                       set_impl_opts)
from .registry import get as _get_impl
from .request import Request
from .sock import Sock
from .stats import GroupStats, SockStats

__all__ = [
    "listen", "connect", "listen_unix", "connect_unix", "listen_fd",
    "impls", "default_impl", "set_default_impl", "get_impl_opts", "set_impl_opts",
    "register", "Sock", "Request", "Pipe", "ImplOpts", "SockOpts", "ImplInfo", "NetImplError",
    "SockGroup", "optimal_group", "NetImpl", "GroupImpl", "SockStats", "GroupStats",
]

__version__ = "0.1.0"


def _sock_opts(opts: object) -> SockOpts:
    if opts is None:
        return SockOpts()
    if not isinstance(opts, SockOpts):
        raise TypeError(f"opts must be a netimpl.SockOpts, not {opts!r}")
    opts.__post_init__()
    return opts.copy()


def listen(host: str, port: int, *, impl: str | None = None, opts: SockOpts | None = None) -> Sock:
    """A bound, listening, non-blocking socket; ``port=0`` picks a free port."""
    host, port = check_host_port(host, port)
    sock_opts = _sock_opts(opts)
    return _get_impl(impl).listen(host, port, sock_opts)


def connect(host: str, port: int, *, impl: str | None = None, opts: SockOpts | None = None) -> Sock:
    """A connected, non-blocking socket."""
    host, port = check_host_port(host, port)
    sock_opts = _sock_opts(opts)
    return _get_impl(impl).connect(host, port, sock_opts)


def listen_unix(path: "str | bytes | os.PathLike", *, impl: str | None = None, opts: SockOpts | None = None) -> Sock:
    """A listening, non-blocking Unix-domain stream socket at ``path``.

    A stale socket file left by a server that is gone is replaced; a live
    listener's path, or a file that is not a socket, raises ``OSError``. A
    name starting with a NUL byte is in Linux's abstract namespace. The path
    is removed when the listener is closed. No zero-copy on these sockets.
    """
    from .unix import check_path

    return _get_impl(impl).listen_unix(check_path(path), _sock_opts(opts))


def connect_unix(path: "str | bytes | os.PathLike", *, impl: str | None = None,
                 opts: SockOpts | None = None) -> Sock:
    """A non-blocking Unix-domain stream socket connected to ``path``."""
    from .unix import check_path

    return _get_impl(impl).connect_unix(check_path(path), _sock_opts(opts))


def listen_fd(fd: int, *, impl: str | None = None, opts: SockOpts | None = None) -> Sock:
    """A Sock over ``fd``, a TCP or Unix-domain socket that is already listening.

    For socket activation (systemd's ``LISTEN_FDS``, libnbd's captive mode):
    the Sock owns the fd from then on and closes it. ``ValueError`` if ``fd``
    is not a listening stream socket (the fd is then left as it was).
    """
    if isinstance(fd, bool) or not isinstance(fd, int) or fd < 0:
        raise TypeError(f"fd must be a non-negative int, not {fd!r}")
    return _get_impl(impl).listen_fd(fd, _sock_opts(opts))


def _register_builtin() -> None:
    from . import posix, uring

    register(posix.PosixImpl(), posix.PRIORITY)
    register(uring.UringImpl(), uring.PRIORITY)


_register_builtin()
