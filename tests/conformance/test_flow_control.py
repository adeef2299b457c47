"""Conformance: flow control (``Sock.queued_bytes``, ``SockGroup.pause_reading``/``resume_reading``).

Every case runs in a group of the backend alone and in a mixed group that
also holds every other backend's sockets, because a mixed group waits in a
different place (one epoll over the group impls' fds).
"""

from __future__ import annotations

import errno
import socket
import threading
import time

import pytest

import netimpl
from tests.conformance.conftest import pattern, wait_for


def _cpu_over(g: netimpl.SockGroup, seconds: float, timeout: float = 0.1) -> tuple[float, float, int]:
    """Poll ``g`` for ``seconds``; (CPU seconds used, wall seconds, polls made)."""
    cpu0, wall0, polls = time.process_time(), time.monotonic(), 0
    while time.monotonic() - wall0 < seconds:
        g.poll(timeout=timeout)
        polls += 1
    return time.process_time() - cpu0, time.monotonic() - wall0, polls


def test_queued_bytes_counts_requests_until_their_callbacks_run(net):
    client, server = net.pair()
    seen = []

    def cb(req, status):
        seen.append((req.nbytes, status, server.queued_bytes))

    assert server.queued_bytes == 0
    reqs = [netimpl.Request([b"a" * 100, b"b" * 28], cb), netimpl.Request([b""], cb), netimpl.Request([b"c" * 7], cb)]
    for r in reqs:
        server.writev_async(r)
    assert server.queued_bytes == 135
    server.flush()
    # Each callback sees its own request no longer counted, the later ones still counted.
    wait_for(lambda: len(seen) == 3, lambda: server.flush())
    assert seen == [(128, 0, 7), (0, 0, 7), (7, 0, 0)]
    assert server.queued_bytes == 0
    server.writev_async(netimpl.Request([b"x" * 10]))
    server.close()  # ECANCELED before close returns
    assert server.queued_bytes == 0


def test_queued_bytes_counts_a_partly_sent_request_whole(net):
    client, server = net.pair()
    server.set_sendbuf(4096)
    big = pattern(8 << 20)
    done = []
    server.writev_async(netimpl.Request([big], lambda r, st: done.append(st)))
    server.flush()
    assert server.stats.bytes_sent < len(big), "loopback took 8 MiB at once: the test cannot see a partial send"
    assert server.queued_bytes == len(big)
    got = bytearray()
    buf = bytearray(1 << 20)
    deadline = time.monotonic() + 10
    while len(got) < len(big) and time.monotonic() < deadline:
        server.flush()
        n = client.recv_into(buf)
        if n:
            got += buf[:n]
    server.flush()
    assert bytes(got) == big and done == [0] and server.queued_bytes == 0


def test_paused_socket_with_data_waiting_costs_no_cpu_and_resume_serves_it(net, mixed):
    client, server = net.pair()
    g = net.group(mixed)
    calls = []
    buf = bytearray(4)

    def on_read(grp, sock):
        n = sock.recv_into(buf)
        calls.append(bytes(buf[:n]) if n else n)

    g.add_sock(server, on_read)
    g.pause_reading(server)
    client.writev([b"0123456789"])
    cpu, wall, polls = _cpu_over(g, 0.4)
    assert calls == [], "a paused socket's read callback ran"
    assert polls <= 6, f"poll(timeout=0.1) returned {polls} times in {wall:.2f}s: the paused socket cut waits short"
    assert cpu < 0.1, f"{cpu:.3f}s of CPU in {wall:.2f}s while paused"
    g.resume_reading(server)
    # No new kernel event: the data that waited is served by the following polls.
    wait_for(lambda: b"".join(c for c in calls if c) == b"0123456789", lambda: g.poll(timeout=0.05))


def test_resume_serves_data_left_in_the_recv_pipe(impl, net, mixed):
    old = netimpl.get_impl_opts(impl)
    netimpl.set_impl_opts(impl, enable_recv_pipe=True)
    try:
        client, server = net.pair()
    finally:
        netimpl.set_impl_opts(impl, old)
    g = net.group(mixed)
    got = []

    def on_read(grp, sock):
        b = bytearray(2)                 # small reads: the rest stays in the recv pipe
        n = sock.recv_into(b)
        if n:
            got.append(bytes(b[:n]))
        grp.pause_reading(sock)          # pause from inside its own callback

    g.add_sock(server, on_read)
    client.writev([b"abcdef"])
    wait_for(lambda: got == [b"ab"], lambda: g.poll(timeout=0.05))
    assert server._has_buffered(), "the pipe should hold the rest"
    cpu, wall, polls = _cpu_over(g, 0.3)
    assert got == [b"ab"] and cpu < 0.1 and polls <= 5
    g.resume_reading(server)
    wait_for(lambda: len(got) == 2, lambda: g.poll(timeout=0.05))
    assert got == [b"ab", b"cd"]


def test_writes_and_completions_go_on_while_paused(net, mixed):
    client, server = net.pair()
    g = net.group(mixed)
    g.add_sock(server, lambda grp, s: pytest.fail("read callback of a paused socket"))
    g.pause_reading(server)
    client.writev([b"unread"])
    done = []
    data = pattern(300_000)
    server.writev_async(netimpl.Request([data], lambda r, st: done.append(st)))
    got = bytearray()
    buf = bytearray(65536)

    def step():
        g.poll(timeout=0.01)
        n = client.recv_into(buf)
        if n:
            got.extend(buf[:n])

    wait_for(lambda: done and len(got) == len(data), step)
    assert done == [0] and bytes(got) == data and server.queued_bytes == 0


def test_socket_at_eof_paused_while_its_reply_drains_is_not_called_back(net, mixed):
    lsock = net.listen()
    peer = socket.create_connection(("127.0.0.1", lsock.getaddr()[1]))
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    server = net.accept(lsock)
    server.set_sendbuf(65536)
    g = net.group(mixed)
    reply = pattern(4 << 20, seed=3)
    events = []
    done = []
    buf = bytearray(65536)

    def on_read(grp, sock):
        n = sock.recv_into(buf)
        events.append(n)
        if n:
            sock.writev_async(netimpl.Request([reply], lambda r, st: done.append(st)))
        elif n == 0:
            grp.pause_reading(sock)   # EOF: nothing more to read, the reply still drains

    g.add_sock(server, on_read)
    peer.sendall(b"GET")
    peer.shutdown(socket.SHUT_WR)     # half-close: the everyday NBD/HTTP client pattern
    wait_for(lambda: 0 in events, lambda: g.poll(timeout=0.01))
    assert server.queued_bytes == len(reply)
    # The peer does not read yet: the reply waits on a full send buffer.
    cpu, wall, polls = _cpu_over(g, 0.5)
    assert events == [3, 0], f"read callback ran {len(events)} times"
    assert cpu < 0.1, f"poll spun: {cpu:.3f}s of CPU in {wall:.2f}s with a reply waiting on a slow peer"
    assert polls <= 7, f"poll(timeout=0.1) returned {polls} times in {wall:.2f}s"
    got = bytearray()
    reader = threading.Thread(target=lambda: _read_to_eof(peer, got, len(reply)))
    reader.start()
    wait_for(lambda: done, lambda: g.poll(timeout=0.05), timeout=20)
    reader.join(10)
    assert done == [0] and bytes(got) == reply
    peer.close()


def _read_to_eof(peer: socket.socket, out: bytearray, n: int) -> None:
    peer.settimeout(10)
    while len(out) < n:
        chunk = peer.recv(1 << 20)
        if not chunk:
            break
        out += chunk


def test_paused_listener_accepts_nothing_until_resumed(net, mixed):
    lsock = net.listen()
    g = net.group(mixed)
    accepted = []

    def on_accept(grp, ls):
        s = ls.accept()
        if s is not None:
            net.socks.append(s)
            accepted.append(s)

    g.add_sock(lsock, on_accept)
    g.pause_reading(lsock)
    c = net.connect("127.0.0.1", lsock.getaddr()[1])
    cpu, wall, polls = _cpu_over(g, 0.3)
    assert accepted == [] and cpu < 0.1 and polls <= 5
    g.resume_reading(lsock)
    wait_for(lambda: accepted, lambda: g.poll(timeout=0.05))
    assert accepted[0].getaddr()[3] == c.getaddr()[1]


def test_pause_and_resume_rules(net):
    client, server = net.pair()
    other = net.group()
    g = net.group()
    calls = []
    g.add_sock(server, lambda grp, s: calls.append(s.recv_into(bytearray(64))))
    with pytest.raises(ValueError, match="not in this group"):
        other.pause_reading(server)
    with pytest.raises(ValueError, match="not in this group"):
        other.resume_reading(server)
    g.resume_reading(server)              # not paused: nothing happens
    g.pause_reading(server)
    g.pause_reading(server)               # twice ...
    g.resume_reading(server)              # ... undone by one resume
    client.writev([b"x"])
    wait_for(lambda: calls == [1], lambda: g.poll(timeout=0.01))
    g.pause_reading(server)
    g.remove_sock(server)                 # forgets the pause
    g.add_sock(server, lambda grp, s: calls.append(s.recv_into(bytearray(64))))
    client.writev([b"y"])
    wait_for(lambda: calls == [1, 1], lambda: g.poll(timeout=0.01))
    g.remove_sock(server)
    server.close()
    with pytest.raises(ValueError, match="not in this group"):
        g.pause_reading(server)
    with pytest.raises(ValueError, match="not in this group"):
        g.pause_reading("not a socket")  # type: ignore[arg-type]


def test_peer_reset_while_paused_neither_spins_nor_loses_the_error(net, mixed):
    lsock = net.listen()
    peer = socket.create_connection(("127.0.0.1", lsock.getaddr()[1]))
    server = net.accept(lsock)
    g = net.group(mixed)
    seen = []

    def on_read(grp, sock):
        try:
            seen.append(sock.recv_into(bytearray(64)))
        except OSError as exc:
            seen.append(exc.errno)
            grp.remove_sock(sock)

    g.add_sock(server, on_read)
    g.pause_reading(server)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    peer.close()                           # RST
    cpu, wall, polls = _cpu_over(g, 0.3)
    assert seen == [] and cpu < 0.1 and polls <= 5, (seen, cpu, polls)
    g.resume_reading(server)
    wait_for(lambda: seen, lambda: g.poll(timeout=0.05))
    assert seen[0] in (errno.ECONNRESET, 0)
