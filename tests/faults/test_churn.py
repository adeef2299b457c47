"""Connection churn: thousands of connect/accept/close, ended every way a connection ends.

A quarter of the connections close cleanly, a quarter are reset by the
client (SO_LINGER 0), a quarter are closed by the server with a reply still
queued, and a quarter by the client with a request still queued. After the
churn the process holds the fds it held before, no socket object is left
alive, every request's callback ran exactly once, and the resident set is
where it was (within a margin for the allocator).
"""

from __future__ import annotations

import gc
import os
import socket
import struct
import time

import pytest

import netimpl
from tests.conftest import open_fds

from .conftest import backend_params, backends_of, rss, scale

ROUND = 50                 # connections open at once
RSS_MARGIN = 8 << 20


class Churn:
    def __init__(self, backends: list[str]) -> None:
        self.backends = backends
        self.group = netimpl.SockGroup()
        self.listeners = [netimpl.listen("127.0.0.1", 0, impl=b) for b in backends]
        for lsock in self.listeners:
            self.group.add_sock(lsock, self._accept)
        self.server: dict[int, netimpl.Sock] = {}      # by the client's port
        self.port: dict[netimpl.Sock, int] = {}
        self.queued = 0
        self.completed = 0
        self.statuses: set[int] = set()
        self.churned = 0

    def _done(self, req: netimpl.Request, status: int) -> None:
        self.completed += 1
        self.statuses.add(status)

    def _accept(self, group: netimpl.SockGroup, lsock: netimpl.Sock) -> None:
        while (sock := lsock.accept()) is not None:
            self.port[sock] = sock.getaddr()[3]
            self.server[self.port[sock]] = sock
            group.add_sock(sock, self._read)

    def _read(self, group: netimpl.SockGroup, sock: netimpl.Sock) -> None:
        buf = bytearray(4096)
        try:
            n = sock.recv_into(buf)
        except OSError:
            n = 0
        if n == 0:
            self.server.pop(self.port.pop(sock), None)
            group.remove_sock(sock)
            sock.close()

    def _request(self, sock: netimpl.Sock) -> None:
        sock.writev_async(netimpl.Request([b"x" * 100], cb=self._done))
        self.queued += 1

    def poll_until(self, cond, what: str) -> None:
        deadline = time.monotonic() + 10
        while not cond():
            assert time.monotonic() < deadline, what
            self.group.poll(timeout=0.001)

    def round(self, n: int) -> None:
        clients = []
        for i in range(n):
            b = i % len(self.backends)
            c = netimpl.connect("127.0.0.1", self.listeners[b].getaddr()[1], impl=self.backends[b])
            clients.append(c)
            self._request(c)
            c.flush()
        ports = [c.getaddr()[1] for c in clients]
        self.poll_until(lambda: all(p in self.server for p in ports), "connections were not accepted")
        for i, c in enumerate(clients):
            mode = i % 4
            if mode == 1:       # reset by the client
                dup = socket.socket(fileno=os.dup(c.fileno()))
                dup.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                dup.close()
            elif mode == 2:     # closed by the server with a reply queued
                s = self.server.pop(ports[i])
                del self.port[s]
                self._request(s)
                self.group.remove_sock(s)
                s.close()
            elif mode == 3:     # closed by the client with a request queued, never flushed
                self._request(c)
            c.close()
        self.poll_until(lambda: not any(p in self.server for p in ports), "the server kept closed connections")
        self.churned += n

    def close(self) -> None:
        for sock in list(self.server.values()):
            self.group.remove_sock(sock)
            sock.close()
        for lsock in self.listeners:
            self.group.remove_sock(lsock)
            lsock.close()
        self.group.close()


def _live_socks() -> int:
    return sum(1 for o in gc.get_objects() if isinstance(o, netimpl.Sock) and not o.closed)


@pytest.mark.parametrize("impl", backend_params())
def test_churn_leaves_fds_sockets_and_memory_at_baseline(ledger, impl):
    backends = backends_of(impl)
    total = scale(2000, 10000)
    base_fds = open_fds()
    churn = Churn(backends)
    try:
        for _ in range(4):                  # warm up: allocator arenas, free lists, the group's ring
            churn.round(ROUND)
        gc.collect()
        fds, mem, live = open_fds(), rss(), _live_socks()
        while churn.churned < total:
            churn.round(ROUND)
        churn.poll_until(lambda: churn.completed == churn.queued, "request callbacks missing")
        gc.collect()
        assert open_fds() == fds, f"fds: {fds} before the churn, {open_fds()} after"
        assert _live_socks() == live, "sockets of closed connections are still alive"
        grown = rss() - mem
        assert grown < RSS_MARGIN, f"RSS grew by {grown / 2**20:.1f} MiB over {churn.churned} connections"
        assert churn.statuses <= {0, 104, 32, 125}, churn.statuses   # 0, ECONNRESET, EPIPE, ECANCELED
        ledger.churned(impl, churn.churned)
        ledger.fault(impl, "reset by client", churn.churned // 4)
    finally:
        churn.close()
    gc.collect()
    assert open_fds() == base_fds
