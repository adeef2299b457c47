"""Peers that stop reading: flow control keeps memory bounded and the poll loop asleep.

* An unread peer: it pipelines requests and reads no reply. A server that
  pauses reading a connection while its ``queued_bytes`` is over a bound
  holds at most the bound plus one reply, is never called back while
  paused, and its ``poll(timeout)`` sleeps although requests wait in the
  recv pipe; resuming serves them without any new kernel event, and then
  every reply arrives, in order.
* A half-closed peer (issue 15): it sends a request, shuts its write side
  and reads the reply slowly. The reply is larger than the send buffer; the
  server pauses the socket at EOF. ``poll(timeout)`` must sleep while the
  reply waits for room, not resubmit the send on every poll.
"""

from __future__ import annotations

import resource
import socket
import struct
import time

import pytest

import netimpl

from .conftest import backend_params, backends_of, rss

REQ = struct.Struct(">I12x")            # a 16-byte request: its index
REPLY = 64 << 10
HIGH, LOW = 1 << 20, 256 << 10           # pause above HIGH queued bytes, resume below LOW
CPU_IDLE = 0.15                          # seconds of CPU allowed over half a second of polling (a spin: ~0.5)


def cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def reply(i: int) -> bytearray:
    out = bytearray([i % 251]) * REPLY
    out[:4] = struct.pack(">I", i)
    return out


def _connected(lsock: netimpl.Sock, rcvbuf: int) -> tuple[socket.socket, netimpl.Sock]:
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    client.connect(("127.0.0.1", lsock.getaddr()[1]))
    deadline = time.monotonic() + 5
    while (server := lsock.accept()) is None:
        assert time.monotonic() < deadline
        time.sleep(0.001)
    return client, server


class Bounded:
    """A request/reply server that pauses a connection while its unsent replies are over HIGH."""

    def __init__(self, group: netimpl.SockGroup, sock: netimpl.Sock) -> None:
        self.group, self.sock = group, sock
        self.partial = b""
        self.next = 0
        self.outstanding = 0         # bytes of replies whose callbacks have not run: what queued_bytes must say
        self.max_queued = 0
        self.paused = False
        self.called_while_paused = 0
        self.statuses: list[int] = []
        group.add_sock(sock, self.readable)

    def readable(self, group: netimpl.SockGroup, sock: netimpl.Sock) -> None:
        if self.paused:
            self.called_while_paused += 1
        buf = bytearray(64 * REQ.size)
        n = sock.recv_into(buf)
        if not n:
            return
        data = self.partial + bytes(buf[:n])
        whole = len(data) // REQ.size * REQ.size
        self.partial = data[whole:]
        for off in range(0, whole, REQ.size):
            (i,) = REQ.unpack_from(data, off)
            assert i == self.next, f"request {i} where {self.next} was due"
            self.next += 1
            sock.writev_async(netimpl.Request([reply(i)], cb=self.done))
            self.outstanding += REPLY
            self.max_queued = max(self.max_queued, sock.queued_bytes)
        if sock.queued_bytes >= HIGH and not self.paused:
            group.pause_reading(sock)
            self.paused = True

    def done(self, req: netimpl.Request, status: int) -> None:
        self.statuses.append(status)
        self.outstanding -= REPLY
        if self.paused and self.sock.group is self.group and self.sock.queued_bytes <= LOW:
            self.paused = False
            self.group.resume_reading(self.sock)


def _read_replies(client: socket.socket, n: int, poll, timeout: float = 30.0) -> int:
    """Read ``n`` replies, checking each, while ``poll()`` drives the server; returns the bytes read."""
    client.setblocking(False)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)   # the peer reads at last, and fast
    got = bytearray()
    deadline = time.monotonic() + timeout
    done = 0
    while done < n:
        assert time.monotonic() < deadline, f"{done} of {n} replies in time"
        poll()
        try:
            got += client.recv(1 << 20)
        except BlockingIOError:
            time.sleep(0.0001)
            continue
        while len(got) >= REPLY:
            assert got[:REPLY] == reply(done), f"reply {done} is wrong"
            del got[:REPLY]
            done += 1
    return n * REPLY


@pytest.mark.parametrize("impl", backend_params())
def test_unread_peer_paused_server_holds_a_bounded_amount_and_sleeps(ledger, impl):
    backends = backends_of(impl)
    nreq = 1024                           # 64 MiB of replies if nothing held the server back
    group = netimpl.SockGroup()
    lsocks = [netimpl.listen("127.0.0.1", 0, impl=b) for b in backends]
    pairs, servers = [], []
    try:
        for lsock in lsocks:
            client, sock = _connected(lsock, 16 << 10)
            pairs.append((client, sock))
            servers.append(Bounded(group, sock))
            client.sendall(b"".join(REQ.pack(i) for i in range(nreq)))
        mem = rss()
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            group.poll(timeout=0.05)
        assert all(s.paused for s in servers), "the server never reached its bound"
        started = cpu()
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            group.poll(timeout=0.05)
        spent = cpu() - started
        for s in servers:
            assert s.called_while_paused == 0, "a paused socket was called back"
            assert s.sock.queued_bytes == s.outstanding, (s.sock.queued_bytes, s.outstanding)
            assert s.max_queued <= HIGH + 64 * REPLY, s.max_queued
            assert s.next < nreq, "everything was read although the peer reads nothing"
        grown = rss() - mem
        assert grown < 16 << 20, f"RSS grew by {grown / 2**20:.1f} MiB while the peer read nothing"
        assert spent < CPU_IDLE, f"{spent:.2f} s of CPU in 0.5 s of poll(timeout) with every socket paused"
        ledger.fault(impl, "unread peer", len(servers))
        for (client, _), s in zip(pairs, servers):
            ledger.verified(impl, _read_replies(client, nreq, group.poll))
            assert s.next == nreq and s.statuses == [0] * nreq
        assert all(s.sock.queued_bytes == 0 for s in servers)
    finally:
        for client, sock in pairs:
            if sock.group is not None:
                group.remove_sock(sock)
            sock.close()
            client.close()
        for lsock in lsocks:
            lsock.close()
        group.close()


@pytest.mark.parametrize("impl", backend_params())
def test_half_closed_peer_with_a_reply_larger_than_the_send_buffer_costs_no_cpu(ledger, impl):
    backends = backends_of(impl)
    size = 8 << 20
    group = netimpl.SockGroup()
    lsocks = [netimpl.listen("127.0.0.1", 0, impl=b) for b in backends]
    pairs: list[tuple[socket.socket, netimpl.Sock]] = []
    calls = {"after pause": 0}
    paused: set[netimpl.Sock] = set()
    statuses: list[int] = []
    body = bytes(range(256)) * (size // 256)

    def readable(group: netimpl.SockGroup, sock: netimpl.Sock) -> None:
        if sock in paused:
            calls["after pause"] += 1
        buf = bytearray(4096)
        while (n := sock.recv_into(buf)) is not None:
            if n == 0:                    # the peer half-closed: nothing more to read, the reply drains
                group.pause_reading(sock)
                paused.add(sock)
                return
            if buf[:n] == b"GET":
                sock.writev_async(netimpl.Request([body], cb=lambda r, s: statuses.append(s)))

    try:
        for lsock in lsocks:
            client, sock = _connected(lsock, 16 << 10)
            sock.set_sendbuf(64 << 10)
            group.add_sock(sock, readable)
            pairs.append((client, sock))
            client.sendall(b"GET")
            client.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + 5
        while len(paused) < len(pairs):
            assert time.monotonic() < deadline, "the EOF was not seen"
            group.poll(timeout=0.01)
        started = cpu()
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            group.poll(timeout=0.05)
        spent = cpu() - started
        assert statuses == [], "the reply completed although the peer read nothing"
        assert calls["after pause"] == 0, "the paused socket at EOF was called back"
        assert spent < CPU_IDLE, f"{spent:.2f} s of CPU in 0.5 s of poll(timeout) while a reply waits for room"
        ledger.fault(impl, "half-closed peer", len(pairs))
        for client, _ in pairs:
            client.setblocking(False)
            got = bytearray()
            deadline = time.monotonic() + 30
            while len(got) < size:
                assert time.monotonic() < deadline, f"{len(got)} of {size} bytes of the reply"
                group.poll(timeout=0.001)
                try:
                    chunk = client.recv(1 << 20)
                except BlockingIOError:
                    continue
                assert chunk, f"EOF after {len(got)} bytes"
                got += chunk
            assert got == body
            ledger.verified(impl, size)
        deadline = time.monotonic() + 5
        while len(statuses) < len(pairs) and time.monotonic() < deadline:
            group.poll(timeout=0.01)
        assert statuses == [0] * len(pairs)
    finally:
        for client, sock in pairs:
            if sock.group is not None:
                group.remove_sock(sock)
            sock.close()
            client.close()
        for lsock in lsocks:
            lsock.close()
        group.close()


@pytest.mark.parametrize("impl", backend_params())
def test_a_paused_listener_under_a_connection_flood_sleeps_and_then_accepts_them_all(ledger, impl):
    """What a server does at its fd limit: pause the listener. Connections queue in the backlog meanwhile."""
    backends = backends_of(impl)
    group = netimpl.SockGroup()
    lsocks = [netimpl.listen("127.0.0.1", 0, impl=b) for b in backends]
    accepted: list[netimpl.Sock] = []
    calls = {"while paused": 0}
    paused = set(lsocks)

    def accept(group: netimpl.SockGroup, lsock: netimpl.Sock) -> None:
        if lsock in paused:
            calls["while paused"] += 1
        while (sock := lsock.accept()) is not None:
            accepted.append(sock)

    clients: list[socket.socket] = []
    try:
        for lsock in lsocks:
            group.add_sock(lsock, accept)
            group.pause_reading(lsock)
        for i in range(40):
            c = socket.socket()
            c.setblocking(False)
            c.connect_ex(("127.0.0.1", lsocks[i % len(lsocks)].getaddr()[1]))
            clients.append(c)
        ledger.fault(impl, "connection flood on a paused listener", len(clients))
        started = cpu()
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            group.poll(timeout=0.05)
        spent = cpu() - started
        assert calls["while paused"] == 0 and not accepted, "a paused listener was called back"
        assert spent < CPU_IDLE, f"{spent:.2f} s of CPU in 0.5 s of poll(timeout) with the listeners paused"
        for lsock in lsocks:
            paused.discard(lsock)
            group.resume_reading(lsock)
        deadline = time.monotonic() + 5
        while len(accepted) < len(clients):
            assert time.monotonic() < deadline, f"{len(accepted)} of {len(clients)} accepted after resuming"
            group.poll(timeout=0.01)
        assert sorted(s.getaddr()[3] for s in accepted) == sorted(c.getsockname()[1] for c in clients)
    finally:
        for sock in accepted:
            sock.close()
        for c in clients:
            c.close()
        for lsock in lsocks:
            if lsock.group is not None:
                group.remove_sock(lsock)
            lsock.close()
        group.close()
