"""The server: a listener and its clients in one :class:`netimpl.SockGroup`, polled in one loop.

Two timers run beside the group, checked once per :meth:`NbdServer.poll`
(whose wait they shorten): the negotiation deadline of every client that
has not reached transmission yet, and the end of an accept back-off.

Why a back-off: when ``accept`` fails for want of a resource (the fd limit,
EMFILE or ENFILE; ENOBUFS, ENOMEM), the connection stays in the backlog and
the listener stays readable, so accepting again at once fails again, and
logs again, as fast as the loop turns. Instead the server pauses the
listener (``SockGroup.pause_reading``: no accept callback, and its
readiness no longer wakes the poll) for :data:`ACCEPT_BACKOFF` seconds,
logs once for the whole episode, and tries again; the clients wait in the
backlog meanwhile. The negotiation deadline is the other half: without it
a client that connects and never negotiates holds its fd for good, and
enough of them hold the server at its fd limit.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import ssl
import time
from typing import Callable, Mapping

import netimpl

from .connection import Connection
from .handshake import TLS_MODES
from .store import Store

logger = logging.getLogger("netimpl.nbd")

__all__ = ["NbdServer"]

MAX_NAME_BYTES = 4096      # the protocol's limit on a string
#: seconds a client has from its connection to the end of negotiation (as qemu-nbd's --handshake-limit)
DEFAULT_HANDSHAKE_TIMEOUT = 10.0
#: seconds without accepting after an accept failed (EMFILE...); then the server tries again
ACCEPT_BACKOFF = 0.5


class NbdServer:
    """Serves ``exports`` (name → :class:`~netimpl.nbd.store.Store`) over NBD on ``host:port``.

    Single-threaded: call :meth:`poll` (or :meth:`serve`) from one thread.
    The stores stay the caller's: :meth:`close` does not close them.
    ``impl`` names the netimpl backend (``None``: the default one).
    A client that has not finished negotiating (reached ``NBD_OPT_GO`` or
    ``NBD_OPT_EXPORT_NAME``) ``handshake_timeout`` seconds after it
    connected is dropped; ``None`` lets it take forever.
    ``tls`` (``off``, ``on`` or ``require``) with ``tls_context`` (a server
    ``ssl.SSLContext``, see :func:`netimpl.tls.server_context`) offers or
    requires NBD_OPT_STARTTLS; the TLS layer is :mod:`netimpl.tls`'s, so
    requests keep their life cycle and zero-copy its guarantee.
    """

    def __init__(self, exports: Mapping[str, Store], host: str = "127.0.0.1", port: int = 10809, *,
                 impl: str | None = None, handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,
                 listener: netimpl.Sock | None = None, tls: str = "off", tls_context: "ssl.SSLContext | None" = None
                 ) -> None:
        if tls not in TLS_MODES:
            raise ValueError(f"tls must be one of {', '.join(TLS_MODES)}, not {tls!r}")
        if tls != "off" and not isinstance(tls_context, ssl.SSLContext):
            raise TypeError(f"tls={tls!r} needs tls_context, a server ssl.SSLContext (netimpl.tls.server_context), "
                            f"not {tls_context!r:.60}")
        self.tls_mode = tls
        self.tls_context = tls_context
        if handshake_timeout is not None:
            if isinstance(handshake_timeout, bool) or not isinstance(handshake_timeout, (int, float)):
                raise TypeError(f"handshake_timeout must be a number of seconds or None, not {handshake_timeout!r}")
            if not handshake_timeout > 0 or math.isinf(handshake_timeout):
                raise ValueError(f"handshake_timeout must be a positive number of seconds, not {handshake_timeout!r}")
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
        self.handshake_timeout = handshake_timeout
        if listener is not None and not isinstance(listener, netimpl.Sock):
            raise TypeError(f"listener must be a listening netimpl.Sock, not {listener!r:.60}")
        # A listener made elsewhere (a worker of netimpl.workers, a Unix socket) is served as it is.
        self.listener = listener if listener is not None else netimpl.listen(host, port, impl=impl)
        self.group = netimpl.SockGroup()
        self.group.add_sock(self.listener, self._accept)
        self.connections: set[Connection] = set()
        self.accepted = 0
        self.requests_done = 0      # by connections that have ended
        # clients still negotiating → their deadline; insertion order is deadline order
        self._negotiating: dict[Connection, float] = {}
        self._accept_again = 0.0    # while accepting is backed off: when to try again (monotonic)
        self._accept_failed = 0     # accept failures in this episode; 0 when accepting works
        self._next_timer = math.inf  # the earliest of the above

    @property
    def address(self) -> tuple[str, int]:
        """The bound ``(host, port)``."""
        host, port, _, _ = self.listener.getaddr()
        return host, port

    @property
    def impl_name(self) -> str:
        return self.listener.impl_name

    @property
    def zerocopy(self) -> bool | None:
        """Whether the connections this server accepts send zero-copy: True, False, or None for "it depends".

        The listener's own ``zerocopy`` says nothing about that (a listener
        sends nothing). Accepted sockets follow the policy for server
        sockets: the backend's ``enable_zerocopy_send_server`` option, and
        never on loopback, where the kernel copies anyway. So a server on a
        loopback address never does, one on another address does, and one
        on a wildcard address (``0.0.0.0``, ``::``) does for every client
        but a loopback one: None. (Where the kernel refuses ``SO_ZEROCOPY``
        a socket sends by copy all the same, and an address other than
        127.0.0.0/8 and ::1 configured on the loopback interface is taken
        for what it is not here; each connection's log line says what it
        got.)
        """
        if not (self.listener.is_ipv4() or self.listener.is_ipv6()):
            return False  # a Unix-domain socket: no zero-copy there
        policy = getattr(netimpl.get_impl_opts(self.impl_name), "enable_zerocopy_send_server", False)
        return self.zerocopy_policy(self.address[0], policy)

    @staticmethod
    def zerocopy_policy(host: str, enabled: bool) -> bool | None:
        """:attr:`zerocopy` for a server listening on ``host`` with the backend's server option ``enabled``."""
        if not enabled:
            return False
        try:
            ip = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return None  # a host name: it depends on what it resolves to
        return None if ip.is_unspecified else not ip.is_loopback

    def _accept(self, group: netimpl.SockGroup, listener: netimpl.Sock) -> None:
        while True:
            try:
                sock = listener.accept()
            except OSError as exc:          # EMFILE, ENOBUFS...: the client waits in the backlog
                self._back_off(exc)
                return
            if sock is None:
                return
            if self._accept_failed:
                logger.warning("accepting again after %d failed attempts", self._accept_failed)
                self._accept_failed = 0
            self.accepted += 1
            try:
                conn = Connection(self, sock)
                group.add_sock(sock, conn.readable)
            except Exception:
                logger.exception("could not take a new connection")
                sock.close()
                continue
            self.connections.add(conn)
            if self.handshake_timeout is not None:
                deadline = time.monotonic() + self.handshake_timeout
                self._negotiating[conn] = deadline
                self._next_timer = min(self._next_timer, deadline)
            logger.info("%s: connected (%s backend, zero-copy %s)", conn.peer, sock.impl_name,
                        "on" if sock.zerocopy else "off")

    def _back_off(self, exc: OSError) -> None:
        """Pause the listener for ACCEPT_BACKOFF seconds; the first failure of an episode is logged."""
        if not self._accept_failed:
            logger.warning("accept failed: %s; not accepting for %g s at a time until it works again "
                           "(new clients wait in the backlog)", exc, ACCEPT_BACKOFF)
        self._accept_failed += 1
        self.group.pause_reading(self.listener)
        self._accept_again = time.monotonic() + ACCEPT_BACKOFF
        self._next_timer = min(self._next_timer, self._accept_again)

    def _negotiated(self, conn: Connection) -> None:
        """``conn`` has finished negotiating (or ended): its deadline no longer applies (and the
        poll loop stops reading the clock once no deadline is left)."""
        self._negotiating.pop(conn, None)
        if not self._negotiating and not self._accept_again:
            self._next_timer = math.inf

    def _forget(self, conn: Connection) -> None:
        self._negotiating.pop(conn, None)
        if conn in self.connections:
            self.connections.discard(conn)
            self.requests_done += conn.requests

    def _run_timers(self, timeout: float) -> float:
        """Run what is due; ``timeout`` cut down to the next timer (a bad one is left to ``SockGroup.poll``)."""
        if self._next_timer == math.inf:
            return timeout
        now = time.monotonic()
        if now >= self._next_timer:
            if self._accept_again and now >= self._accept_again:
                self._accept_again = 0.0
                if self.listener.group is self.group:
                    self.group.resume_reading(self.listener)
            late = []
            for conn, deadline in self._negotiating.items():
                if deadline > now:
                    break
                late.append(conn)
            for conn in late:
                conn.timed_out(self.handshake_timeout or 0.0)
            nxt = next(iter(self._negotiating.values()), math.inf)
            self._next_timer = min(nxt, self._accept_again or math.inf)
        wait = max(0.0, self._next_timer - now)
        try:
            return min(timeout, wait)
        except TypeError:
            return timeout

    @property
    def requests(self) -> int:
        """Requests served so far, by every connection."""
        return self.requests_done + sum(c.requests for c in self.connections)

    def poll(self, timeout: float = 0.0) -> int:
        """One round: flush replies, reap completions, serve readable clients; waits up to ``timeout``.

        Also drops clients past their negotiation deadline and ends an accept
        back-off; the wait is shorter when one of those falls due sooner.
        """
        return self.group.poll(64, self._run_timers(timeout))

    def serve(self, stop: Callable[[], bool], timeout: float = 0.2) -> None:
        """Poll until ``stop()`` is true; it is checked at least every ``timeout`` seconds."""
        poll = self.group.poll
        timers = self._run_timers
        while not stop():
            poll(64, timers(timeout))

    async def serve_async(self, timer_period: float = 1.0) -> None:
        """Serve from the running asyncio event loop (asyncio's or uvloop) until cancelled.

        The group runs under :func:`netimpl.aio.run`, between the program's
        other tasks; the negotiation deadlines and the accept back-off are
        checked at least every ``timer_period`` seconds. Cancelling leaves the
        server open (:meth:`close` it, or serve it again); an exception from
        serving ends the coroutine with it.
        """
        import asyncio

        import netimpl.aio

        runner = asyncio.ensure_future(netimpl.aio.run(self.group, max_events=64))
        try:
            while not runner.done():
                await asyncio.wait({runner}, timeout=self._run_timers(timer_period))
            runner.result()
        finally:
            if not runner.done():
                runner.cancel()
                try:
                    await runner
                except asyncio.CancelledError:
                    pass

    def close(self) -> None:
        """Drop every client (their queued replies are cancelled) and stop listening. Idempotent."""
        for conn in list(self.connections):
            conn.close()
        self._accept_again = 0.0
        if self.listener.group is not None:
            self.group.remove_sock(self.listener)
        self.listener.close()
        self.group.close()

    def __enter__(self) -> "NbdServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
