"""Creating kernel TCP sockets the way SPDK's posix and uring modules both do.

Shared by every backend built on kernel sockets: resolve with getaddrinfo,
try each address in turn, set the buffer sizes from the backend's options,
SO_REUSEADDR, TCP_NODELAY, SO_PRIORITY, IPV6_V6ONLY and the rest, listen
with a backlog of 512, and end non-blocking. The zero-copy policy lives here
too, since it depends only on options and addresses.
"""

from __future__ import annotations

import errno
import socket

from ._kernel import SO_ZEROCOPY, TCP_QUICKACK, TCP_USER_TIMEOUT
from .addr import resolve
from .errors import logger
from .iface import is_loopback_address
from .options import ImplOpts, SockOpts

__all__ = ["create_listener", "create_connection", "configure_accepted", "want_zerocopy", "enable_zerocopy", "LISTEN_BACKLOG"]

LISTEN_BACKLOG = 512
#: SPDK does not set a socket buffer below this size.
MIN_SOCK_BUF_SIZE = 4096


def _set_common(s: socket.socket, impl_opts: ImplOpts, opts: SockOpts) -> None:
    if impl_opts.recv_buf_size >= MIN_SOCK_BUF_SIZE:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, impl_opts.recv_buf_size)
    if impl_opts.send_buf_size >= MIN_SOCK_BUF_SIZE:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, impl_opts.send_buf_size)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if opts.priority:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_PRIORITY, opts.priority)
    if opts.ack_timeout:
        s.setsockopt(socket.IPPROTO_TCP, TCP_USER_TIMEOUT, opts.ack_timeout)


def _set_connected(s: socket.socket, impl_opts: ImplOpts) -> None:
    if impl_opts.enable_quickack:
        s.setsockopt(socket.IPPROTO_TCP, TCP_QUICKACK, 1)


def _each_address(host: str, port: int, passive: bool, make):
    last: OSError | None = None
    for family, _type, proto, _canon, sa in resolve(host, port, passive):
        s = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC, proto)
        try:
            make(s, family, sa)
        except OSError as exc:
            s.close()
            last = exc
            continue
        s.setblocking(False)
        return s
    assert last is not None
    raise last


def create_listener(host: str, port: int, impl_opts: ImplOpts, opts: SockOpts) -> socket.socket:
    """A bound, listening, non-blocking socket for the first address that works."""

    def make(s: socket.socket, family: int, sa: tuple) -> None:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if opts.reuseport:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        _set_common(s, impl_opts, opts)
        s.bind(sa)
        s.listen(LISTEN_BACKLOG)

    return _each_address(host, port, True, make)


def create_connection(host: str, port: int, impl_opts: ImplOpts, opts: SockOpts) -> socket.socket:
    """A connected, non-blocking socket to the first address that accepts."""

    def make(s: socket.socket, family: int, sa: tuple) -> None:
        _set_common(s, impl_opts, opts)
        s.connect(sa)
        _set_connected(s, impl_opts)

    return _each_address(host, port, False, make)


def configure_accepted(s: socket.socket, impl_opts: ImplOpts, opts: SockOpts) -> None:
    """Options an accepted socket takes from its listener."""
    s.setblocking(False)
    if s.family == socket.AF_UNIX:
        return  # no TCP options there
    if opts.priority:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_PRIORITY, opts.priority)
    _set_connected(s, impl_opts)


def want_zerocopy(s: socket.socket, impl_opts: ImplOpts, opts: SockOpts, server: bool) -> bool:
    """The zero-copy policy: allowed by the options, and not on loopback (nor AF_UNIX: it has none)."""
    if not opts.zcopy or s.family == socket.AF_UNIX:
        return False
    if not (impl_opts.enable_zerocopy_send_server if server else impl_opts.enable_zerocopy_send_client):
        return False
    try:
        local = s.getsockname()[0]
    except OSError:
        return False
    return not is_loopback_address(local)


def enable_zerocopy(s: socket.socket) -> bool:
    """Set SO_ZEROCOPY; False (and sends go by copy) where the kernel refuses it."""
    try:
        s.setsockopt(socket.SOL_SOCKET, SO_ZEROCOPY, 1)
        return True
    except OSError as exc:
        if exc.errno not in (errno.ENOPROTOOPT, errno.EOPNOTSUPP, errno.EINVAL, errno.EPERM):
            logger.warning("SO_ZEROCOPY failed unexpectedly: %s", exc)
        return False
