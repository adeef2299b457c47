"""The server: a listener and its clients in one :class:`netimpl.SockGroup`, polled in one loop."""

from __future__ import annotations

import logging
from typing import Callable, Mapping

import netimpl

from .connection import Connection
from .store import Store

logger = logging.getLogger("netimpl.nbd")

__all__ = ["NbdServer"]

MAX_NAME_BYTES = 4096      # the protocol's limit on a string


class NbdServer:
    """Serves ``exports`` (name → :class:`~netimpl.nbd.store.Store`) over NBD on ``host:port``.

    Single-threaded: call :meth:`poll` (or :meth:`serve`) from one thread.
    The stores stay the caller's: :meth:`close` does not close them.
    ``impl`` names the netimpl backend (``None``: the default one).
    """

    def __init__(self, exports: Mapping[str, Store], host: str = "127.0.0.1", port: int = 10809, *,
                 impl: str | None = None) -> None:
        if not isinstance(exports, Mapping) or not exports:
            raise ValueError(f"exports must be a non-empty mapping of name to store, not {exports!r:.80}")
        for name, store in exports.items():
            if not isinstance(name, str):
                raise TypeError(f"export name {name!r} is not a str")
            if len(name.encode()) > MAX_NAME_BYTES or "\0" in name:
                raise ValueError(f"export name {name[:40]!r}... is over {MAX_NAME_BYTES} bytes or has a NUL")
            if not isinstance(store, Store):
                raise TypeError(f"export {name!r}: {store!r:.60} is not a netimpl.nbd Store")
        self.exports = dict(exports)
        self.listener = netimpl.listen(host, port, impl=impl)
        self.group = netimpl.SockGroup()
        self.group.add_sock(self.listener, self._accept)
        self.connections: set[Connection] = set()
        self.accepted = 0
        self.requests_done = 0      # by connections that have ended

    @property
    def address(self) -> tuple[str, int]:
        """The bound ``(host, port)``."""
        host, port, _, _ = self.listener.getaddr()
        return host, port

    @property
    def impl_name(self) -> str:
        return self.listener.impl_name

    def _accept(self, group: netimpl.SockGroup, listener: netimpl.Sock) -> None:
        while True:
            try:
                sock = listener.accept()
            except OSError as exc:          # EMFILE, ENOBUFS...: the client waits in the backlog
                logger.error("accept failed: %s", exc)
                return
            if sock is None:
                return
            self.accepted += 1
            try:
                conn = Connection(self, sock)
                group.add_sock(sock, conn.readable)
            except Exception:
                logger.exception("could not take a new connection")
                sock.close()
                continue
            self.connections.add(conn)
            logger.info("%s: connected (%s backend)", conn.peer, sock.impl_name)

    def _forget(self, conn: Connection) -> None:
        if conn in self.connections:
            self.connections.discard(conn)
            self.requests_done += conn.requests

    @property
    def requests(self) -> int:
        """Requests served so far, by every connection."""
        return self.requests_done + sum(c.requests for c in self.connections)

    def poll(self, timeout: float = 0.0) -> int:
        """One round: flush replies, reap completions, serve readable clients; waits up to ``timeout``."""
        return self.group.poll(max_events=64, timeout=timeout)

    def serve(self, stop: Callable[[], bool], timeout: float = 0.2) -> None:
        """Poll until ``stop()`` is true; it is checked at least every ``timeout`` seconds."""
        poll = self.group.poll
        while not stop():
            poll(64, timeout)

    def close(self) -> None:
        """Drop every client (their queued replies are cancelled) and stop listening. Idempotent."""
        for conn in list(self.connections):
            conn.close()
        if self.listener.group is not None:
            self.group.remove_sock(self.listener)
        self.listener.close()
        self.group.close()

    def __enter__(self) -> "NbdServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
