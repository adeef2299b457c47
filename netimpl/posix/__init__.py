"""Backend ``posix``: non-blocking kernel sockets, an epoll group, MSG_ZEROCOPY.

The fallback every Linux has. Its per-socket logic is in :mod:`.sock`, the
group in :mod:`.group`, zero-copy bookkeeping in :mod:`.zerocopy` and the
wait of closed zero-copy sockets in :mod:`.orphans`.
"""

from __future__ import annotations

import select
import socket

from ..impl import NetImpl
from ..options import SockOpts
from ..tcp import create_connection, create_listener
from ..unix import create_unix_connection, create_unix_listener, remove_path
from .group import PosixGroupImpl
from .orphans import Orphanage
from .sock import PosixSock

__all__ = ["PosixImpl", "PosixSock", "PosixGroupImpl", "PRIORITY"]

#: The fallback: every other backend ranks above it where it works.
PRIORITY = 0


class PosixImpl(NetImpl):
    """The posix net impl."""

    name = "posix"
    #: The socket class this impl creates (a backend built on posix sockets overrides it).
    sock_type: type[PosixSock] = PosixSock

    def __init__(self) -> None:
        super().__init__()
        self._orphanage: Orphanage | None = None

    @property
    def orphanage(self) -> Orphanage:
        if self._orphanage is None:
            self._orphanage = Orphanage()
        return self._orphanage

    def probe(self) -> str:
        if not hasattr(select, "epoll"):
            return "this platform has no epoll (Linux only)"
        return ""

    def listen(self, host: str, port: int, opts: SockOpts) -> PosixSock:
        impl_opts = self._opts
        s = create_listener(host, port, impl_opts, opts)
        try:
            return self.sock_type(self, s, impl_opts, opts, server=True, listener=True)
        except BaseException:
            s.close()
            raise

    def connect(self, host: str, port: int, opts: SockOpts) -> PosixSock:
        impl_opts = self._opts
        s = create_connection(host, port, impl_opts, opts)
        try:
            return self.sock_type(self, s, impl_opts, opts, server=False)
        except BaseException:
            s.close()
            raise

    def listen_unix(self, path: str | bytes, opts: SockOpts) -> PosixSock:
        s, ino = create_unix_listener(path, self._opts, opts)
        try:
            sock = self.sock_type(self, s, self._opts, opts, server=True, listener=True)
        except BaseException:
            s.close()
            remove_path(path, ino)
            raise
        sock._unix_path = (path, ino)
        return sock

    def connect_unix(self, path: str | bytes, opts: SockOpts) -> PosixSock:
        s = create_unix_connection(path, self._opts, opts)
        try:
            return self.sock_type(self, s, self._opts, opts, server=False)
        except BaseException:
            s.close()
            raise

    def listen_fd(self, fd: int, opts: SockOpts) -> PosixSock:
        s = socket.socket(fileno=fd)
        try:
            if s.type != socket.SOCK_STREAM or s.family not in (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX):
                raise ValueError(f"fd {fd} is not a TCP or Unix-domain stream socket")
            if not s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                raise ValueError(f"fd {fd} is a socket that is not listening")
            s.setblocking(False)
            return self.sock_type(self, s, self._opts, opts, server=True, listener=True)
        except BaseException:
            s.detach()  # the caller's fd: not closed by a refusal
            raise

    def group_impl_create(self) -> PosixGroupImpl:
        return PosixGroupImpl(self)
