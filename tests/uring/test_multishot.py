"""Multishot receive into provided buffers, multishot accept, and their fallbacks: real round trips."""

from __future__ import annotations

import errno
import select
import socket
import struct
import time

import pytest

import netimpl
from netimpl.registry import get as get_impl
from netimpl.uring import group as ugroup


def pair(request, group=None, cb=None):
    """A connected (server, client) pair of uring sockets; the server in ``group`` if given."""
    lsock = netimpl.listen("127.0.0.1", 0, impl="uring")
    request.addfinalizer(lsock.close)
    client = netimpl.connect("127.0.0.1", lsock.getaddr()[1], impl="uring")
    request.addfinalizer(client.close)
    server = None
    while server is None:
        server = lsock.accept()
    request.addfinalizer(server.close)
    if group is not None:
        group.add_sock(server, cb)
    return server, client


def payload(n: int, seed: int = 0) -> bytes:
    return bytes((i * 7 + seed) & 0xFF for i in range(n))


def poll_until(group, cond, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        group.poll(timeout=0.05)


def gi_of(group):
    return group._impls["uring"]


def reader(got: bytearray, size: int = 4096, reading: list | None = None):
    """A read callback appending what it reads, ``size`` bytes at most a call, to ``got``
    (while ``reading[0]``, if given)."""
    def on_read(g, s):
        if reading is None or reading[0]:
            buf = bytearray(size)
            n = s.recv_into(buf)
            if n:
                got.extend(buf[:n])
    return on_read


def test_more_data_than_one_buffer_arrives_whole_and_in_order(request, small_buffers):
    small_buffers(16, 256)
    netimpl.set_impl_opts("uring", direct_recv=False)  # the buffers' path throughout (the fixture restores it)
    group = netimpl.SockGroup()
    got = bytearray()
    sizes = [1, 7, 100, 300, 4096]  # small, across buffer ends, and larger than a buffer

    def on_read(g, s):
        buf = bytearray(sizes[len(got) % len(sizes)])
        n = s.recv_into(buf)
        if n:
            got.extend(buf[:n])

    server, client = pair(request, group, on_read)
    data = payload(20000)
    client.writev_async(netimpl.Request([data]))
    client.flush()
    poll_until(group, lambda: len(got) >= len(data))
    assert bytes(got) == data
    gi = gi_of(group)
    assert gi._bufring.avail() == 16  # every buffer read to its end went back to the ring
    group.poll()  # a receive the ring ran dry for is armed again now that it is full
    assert server._rx_kind == ugroup.RECV and server._rxq.armed
    cqes = gi.ring.counters()["cqes"]
    if get_impl("uring").features["bundle"]:
        assert cqes >= len(data) // 256  # one CQE per buffer filled, reaped in C
    else:
        assert cqes < len(data) // 256  # bundles: one CQE for as many buffers as the data filled
    group.remove_sock(server)
    group.close()


def test_large_reads_at_every_alignment_arrive_byte_exact(request, small_buffers):
    """Copies out of the provided buffers into destinations at every skew against them (the copy
    changes method inside a window of skews, copy.h): every byte where it belongs."""
    small_buffers(64, 16384)
    group = netimpl.SockGroup()
    got = bytearray()
    backing = bytearray(70000)
    skews = iter(range(10**6))

    def on_read(g, s):
        k = next(skews) % 80
        view = memoryview(backing)[k:k + 60000]
        n = s.recv_into(view)
        if n:
            got.extend(view[:n])

    server, client = pair(request, group, on_read)
    data = payload(3 << 20, 5)
    client.writev_async(netimpl.Request([data]))
    while len(got) < len(data):
        client.flush()
        group.poll(timeout=0.05)
    assert len(got) == len(data) and bytes(got) == data
    group.remove_sock(server)
    group.close()


def test_readv_fills_buffers_in_order_from_the_held_buffers(request, small_buffers):
    small_buffers(16, 256)
    group = netimpl.SockGroup()
    server, client = pair(request, group, lambda g, s: None)
    data = payload(1000, 3)
    client.writev([data])
    poll_until(group, lambda: server._rxq is not None and server._rxq.bytes == len(data))
    a, b, c = bytearray(10), memoryview(bytearray(600)), bytearray(1000)
    assert server.readv([a, b, c]) == len(data)
    assert bytes(a) + bytes(b) + bytes(c[:390]) == data
    with pytest.raises(TypeError):
        server.readv([bytearray(4), b"read-only"])
    group.remove_sock(server)
    group.close()


def test_many_sockets_sharing_a_small_ring_run_it_dry_and_recover(request, small_buffers):
    small_buffers(4, 256)
    group = netimpl.SockGroup()
    got: dict = {}
    reading = [False]

    def on_read(g, s):
        if not reading[0]:
            return  # hold on to the buffers: the ring runs dry
        buf = bytearray(256)  # a buffer at a time: what comes, comes through the re-armed receives
        n = s.recv_into(buf)
        if n:
            got[s] += buf[:n]

    pairs = [pair(request, group, on_read) for _ in range(6)]
    want = {}
    for i, (server, client) in enumerate(pairs):
        got[server] = bytearray()
        want[server] = payload(3000, i)
        client.writev([want[server]])
    gi = gi_of(group)
    poll_until(group, lambda: gi._starved)
    assert gi._bufring.avail() == 0
    reading[0] = True
    poll_until(group, lambda: all(len(got[s]) == len(want[s]) for s in got))
    assert all(bytes(got[s]) == want[s] for s in got)
    assert not gi._starved and gi._bufring.avail() == 4
    for server, _ in pairs:
        group.remove_sock(server)
    group.close()


def test_a_paused_socket_keeps_what_it_holds_and_takes_no_more_buffers(request, small_buffers):
    small_buffers(16, 256)
    group = netimpl.SockGroup()
    got = bytearray()
    calls = [0]

    def on_read(g, s):
        calls[0] += 1
        buf = bytearray(65536)
        n = s.recv_into(buf)
        if n:
            got.extend(buf[:n])

    server, client = pair(request, group, on_read)
    first, second = payload(600, 1), payload(2000, 2)
    group.pause_reading(server)
    gi = gi_of(group)
    group.poll()  # arms nothing: paused
    assert not server._poll_armed
    group.resume_reading(server)
    poll_until(group, lambda: server._poll_armed)
    client.writev([first])
    poll_until(group, lambda: server._rxq.bytes == len(first) or got)
    # Pause with data held but not yet read: the multishot is cancelled, the bytes stay held.
    got.clear()
    held = server._rxq.bytes
    group.pause_reading(server)
    poll_until(group, lambda: not server._poll_armed)
    avail = gi._bufring.avail()
    client.writev([second])
    calls[0] = 0
    for _ in range(5):
        group.poll(timeout=0.02)
    assert calls[0] == 0 and gi._bufring.avail() == avail  # nothing consumed while paused
    assert server._rxq.bytes == held and server._has_buffered() == bool(held)
    group.resume_reading(server)
    poll_until(group, lambda: len(got) >= len(first) + len(second) - (len(first) - held))
    assert bytes(got) == (first + second)[len(first) - held:]
    group.remove_sock(server)
    group.close()


def test_removed_with_data_held_reads_it_outside_the_group_then_the_rest(request, small_buffers):
    small_buffers(16, 256)
    group = netimpl.SockGroup()
    server, client = pair(request, group, lambda g, s: None)  # never reads in the group
    first, later = payload(3000, 4), payload(500, 5)
    client.writev([first])
    poll_until(group, lambda: server._rxq is not None and server._rxq.bytes == len(first))
    gi = gi_of(group)
    group.remove_sock(server)
    assert server._rxq is None and gi._bufring.avail() == 16  # copied out, buffers back
    client.writev([later])
    client.close()
    got = bytearray()
    buf = bytearray(700)
    deadline = time.monotonic() + 5
    while True:
        n = server.recv_into(buf)
        if n == 0:
            break
        if n:
            got.extend(buf[:n])
        assert time.monotonic() < deadline
    assert bytes(got) == first + later
    group.close()


def _reset(client) -> None:
    client._s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()


@pytest.mark.parametrize("end", ["eof", "reset"])
def test_bytes_before_eof_or_reset_come_first_then_the_end(request, small_buffers, end):
    small_buffers(16, 256)
    group = netimpl.SockGroup()
    events: list = []
    reading = [False]

    def on_read(g, s):
        if not reading[0]:
            return
        try:
            n = s.recv_into(bytearray(700))
        except OSError as exc:
            events.append(-exc.errno)
            return
        events.append(n)

    server, client = pair(request, group, on_read)
    data = payload(2000, 6)
    client.writev([data])
    poll_until(group, lambda: server._rxq is not None and server._rxq.bytes == len(data))
    if end == "eof":
        client.close()
    else:
        _reset(client)
    poll_until(group, lambda: server._rxq.end)  # the end is known, the bytes still held
    reading[0] = True
    poll_until(group, lambda: events and events[-1] <= 0)
    first_end = next(i for i, e in enumerate(events) if e <= 0)
    assert events[:first_end] == [700, 700, 600]
    assert events[first_end] == (0 if end == "eof" else -errno.ECONNRESET)
    assert server.recv_into(bytearray(10)) == 0  # after an error, EOF, as the kernel does
    group.remove_sock(server)
    group.close()


def test_an_error_held_when_the_socket_leaves_is_raised_by_its_next_read_after_the_bytes(request, small_buffers):
    small_buffers(16, 256)
    group = netimpl.SockGroup()
    server, client = pair(request, group, lambda g, s: None)
    data = payload(900, 7)
    client.writev([data])
    poll_until(group, lambda: server._rxq is not None and server._rxq.bytes == len(data))
    _reset(client)
    poll_until(group, lambda: server._rxq.end)
    group.remove_sock(server)
    buf = bytearray(2000)
    assert server.recv_into(buf) == len(data) and bytes(buf[:len(data)]) == data
    with pytest.raises(ConnectionResetError):
        server.recv_into(buf)
    assert server.recv_into(buf) == 0
    group.close()


def test_multishot_accept_hands_out_many_connections_set_up_as_accept_does(request):
    lsock = netimpl.listen("127.0.0.1", 0, impl="uring")
    request.addfinalizer(lsock.close)
    group = netimpl.SockGroup()
    accepted: list = []
    group.add_sock(lsock, lambda g, s: accepted.extend(iter(s.accept, None)))
    group.poll()
    assert lsock._rx_kind == ugroup.ACCEPT and lsock._poll_armed
    clients = [socket.create_connection(lsock.getaddr()[:2]) for _ in range(40)]
    poll_until(group, lambda: len(accepted) == len(clients))
    for i, s in enumerate(accepted):
        request.addfinalizer(s.close)
        assert s.impl_name == "uring" and not s._s.getblocking()
        assert s._s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    # Each is a working socket: a round trip through the peer it came from.
    peers = {s.getaddr()[3]: s for s in accepted}
    for c in clients:
        c.sendall(b"hi")
        s = peers[c.getsockname()[1]]
        deadline = time.monotonic() + 5
        while (n := s.recv_into(bytearray(8))) is None:
            assert time.monotonic() < deadline
        assert n == 2
        c.close()
    # Paused: the multishot accept is cancelled, connections wait in the backlog.
    group.pause_reading(lsock)
    poll_until(group, lambda: not lsock._poll_armed)
    late = socket.create_connection(lsock.getaddr()[:2])
    request.addfinalizer(late.close)
    for _ in range(3):
        group.poll(timeout=0.02)
    assert len(accepted) == len(clients)
    group.resume_reading(lsock)
    poll_until(group, lambda: len(accepted) == len(clients) + 1)
    request.addfinalizer(accepted[-1].close)
    group.remove_sock(lsock)
    group.close()


def test_connections_a_multishot_accept_took_survive_the_listener_leaving_its_group(request):
    lsock = netimpl.listen("127.0.0.1", 0, impl="uring")
    request.addfinalizer(lsock.close)
    group = netimpl.SockGroup()
    group.add_sock(lsock, lambda g, s: None)  # never accepts in the group
    group.poll()
    clients = [socket.create_connection(lsock.getaddr()[:2]) for _ in range(3)]
    poll_until(group, lambda: len(lsock._accepted) == 3)
    group.remove_sock(lsock)
    got = [lsock.accept() for _ in range(3)]
    assert all(s is not None for s in got) and lsock.accept() is None
    for s in got:
        s.close()
    for c in clients:
        c.close()
    group.close()


def test_features_probed_absent_fall_back_to_poll_and_recv(request, monkeypatch):
    impl = get_impl("uring")
    monkeypatch.setattr(impl, "features", {**impl.features, "recv_multishot": "probed absent",
                                           "accept_multishot": "probed absent"})
    group = netimpl.SockGroup()
    got = bytearray()
    on_read = reader(got)
    lsock = netimpl.listen("127.0.0.1", 0, impl="uring")
    request.addfinalizer(lsock.close)
    accepted: list = []
    group.add_sock(lsock, lambda g, s: accepted.extend(iter(s.accept, None)))
    client = netimpl.connect("127.0.0.1", lsock.getaddr()[1], impl="uring")
    request.addfinalizer(client.close)
    poll_until(group, lambda: accepted)
    server = accepted[0]
    request.addfinalizer(server.close)
    group.add_sock(server, on_read)
    data = payload(50000, 8)
    client.writev_async(netimpl.Request([data]))
    client.flush()
    poll_until(group, lambda: len(got) >= len(data))
    assert bytes(got) == data
    assert lsock._rx_kind == server._rx_kind == ugroup.POLL and server._rxq is None
    assert gi_of(group)._bufring is None
    for s in (server, lsock):
        group.remove_sock(s)
    group.close()


def test_the_probes_report_what_they_find_and_the_info_command_shows_it(monkeypatch, capsys):
    from netimpl import __main__ as cli
    from netimpl import uring

    impl = get_impl("uring")
    assert impl.features["recv_multishot"] == "" and impl.features["accept_multishot"] == ""
    monkeypatch.setattr(uring, "probe_recv_multishot", lambda bundle=False: "the kernel refuses IORING_RECV_MULTISHOT")
    monkeypatch.setattr(impl, "features", dict(impl.features))
    assert impl.probe() == ""  # the backend stays available: only that feature falls back
    assert impl.features["recv_multishot"] == "the kernel refuses IORING_RECV_MULTISHOT"
    cli.info()
    out = capsys.readouterr().out
    assert "recv_multishot   no: the kernel refuses IORING_RECV_MULTISHOT" in out
    assert "accept_multishot in use" in out


def test_no_buffer_ring_after_all_falls_back_per_group(request, monkeypatch, caplog):
    def refuse(*a, **kw):
        raise OSError(errno.EINVAL, "IORING_REGISTER_PBUF_RING: refused")

    monkeypatch.setattr(ugroup, "BufRing", refuse)
    group = netimpl.SockGroup()
    got = bytearray()

    def on_read(g, s):
        buf = bytearray(4096)
        n = s.recv_into(buf)
        if n:
            got.extend(buf[:n])

    server, client = pair(request, group, on_read)
    client.writev([b"still arrives"])
    poll_until(group, lambda: got)
    assert bytes(got) == b"still arrives" and server._rx_kind == ugroup.POLL
    assert "no provided-buffer ring" in caplog.text
    group.remove_sock(server)
    group.close()


def test_the_ring_options_are_checked():
    with pytest.raises(ValueError, match="power of two"):
        netimpl.set_impl_opts("uring", pbuf_entries=100)
    with pytest.raises(ValueError):
        netimpl.set_impl_opts("uring", pbuf_size=1)


def test_a_reply_queued_by_a_read_callback_completes_before_poll_returns(request):
    """The group's flush after the read callbacks submits at once: the request callback runs in that
    poll (as with posix), so a QD1 server makes one poll per request."""
    group = netimpl.SockGroup()
    done: list = []

    def on_read(g, s):
        n = s.recv_into(bytearray(64))
        if n:
            s.writev_async(netimpl.Request([b"reply"], cb=lambda r, st: done.append(st)))

    server, client = pair(request, group, on_read)
    poll_until(group, lambda: server._poll_armed)
    client.writev([b"ask"])
    while not done:
        assert group.poll(timeout=2.0) in (0, 1)
        if group.stats.callbacks:
            break
    assert done == [0]  # in the same poll as the read callback
    got = None
    deadline = time.monotonic() + 5
    while not got:
        got = client.recv_into(buf := bytearray(16))
        assert time.monotonic() < deadline
    assert bytes(buf[:got]) == b"reply"
    group.remove_sock(server)
    group.close()


def test_bytes_in_the_recv_pipe_before_joining_come_before_what_the_ring_receives(request):
    """A read outside a group can leave bytes in the socket's recv pipe; once in a group, those
    are older than anything its multishot receive takes, and are read first."""
    server, client = pair(request)
    first = payload(3000, 1)
    client.writev([first])
    poll = select.poll()
    poll.register(server.fileno(), select.POLLIN)
    assert poll.poll(2000)
    head = bytearray(10)
    assert server.recv_into(head) == 10  # a small read: the rest of what came goes into the pipe
    assert server._has_pipe_bytes()
    group = netimpl.SockGroup()
    got = bytearray()
    group.add_sock(server, reader(got, 65536))
    later = payload(5000, 2)
    client.writev([later])
    poll_until(group, lambda: len(got) == len(first) - 10 + len(later))
    assert bytes(head) + bytes(got) == first + later
    group.remove_sock(server)
    group.close()
