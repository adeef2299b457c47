"""How a uring group's flush sends: sendmsg(2) at once for a lone socket, SENDs in one enter for many.

At queue depth 1 a reply is sent with one sendmsg(2) from the poll that
read its request, as posix sends it; a flush of more than DIRECT_SEND_MAX
sockets prepares one SEND each and submits them all in one io_uring_enter.
What a direct send leaves (the kernel's buffer is full) waits for write
space, never as a SEND on a full socket.
"""

from __future__ import annotations

import socket
import time

import netimpl
from netimpl.uring import group as ugroup
from tests.uring.test_multishot import gi_of, pair, poll_until


def echo(replies):
    def on_read(g, s):
        buf = bytearray(4096)
        n = s.recv_into(buf)
        if n:
            s.writev_async(netimpl.Request([bytes(buf[:n])], lambda r, st: replies.append(st)))

    return on_read


def test_a_lone_reply_goes_by_sendmsg_and_completes_in_the_poll_that_read_its_request(request):
    group = netimpl.SockGroup()
    request.addfinalizer(group.close)
    replies: list[int] = []
    server, client = pair(request, group, echo(replies))
    gi = gi_of(group)
    group.poll(timeout=0)
    ops = gi._ring_sends
    for i in range(20):
        client.writev([b"ping %d" % i])
        n = len(replies)
        poll_until(group, lambda: len(replies) > n)
        assert replies[-1] == 0
        assert gi._ring_sends == ops, "a SEND was made for a lone reply"
        got = bytearray(64)
        poll_until(group, lambda: client.recv_into(got) is not None)
        assert bytes(got).rstrip(b"\0") == b"ping %d" % i
    assert server._send_ud == 0 and server.stats.bytes_sent == sum(len(b"ping %d" % i) for i in range(20))


def test_replies_of_many_sockets_go_as_sends_in_one_enter(request):
    group = netimpl.SockGroup()
    request.addfinalizer(group.close)
    replies: list[int] = []
    pairs = [pair(request, group, echo(replies)) for _ in range(ugroup.DIRECT_SEND_MAX + 3)]
    group.poll(timeout=0)
    gi = gi_of(group)
    ops = gi._ring_sends
    for _, client in pairs:
        client.writev([b"x" * 100])
    while len(replies) < len(pairs):
        group.poll(timeout=0.05)
    # The requests arrived together and were answered by one flush: a SEND each.
    assert gi._ring_sends - ops == len(pairs), "not a SEND per socket"
    assert replies == [0] * len(pairs)
    for _, client in pairs:
        got = bytearray(200)
        poll_until(group, lambda: client.recv_into(got) is not None)
        assert bytes(got[:100]) == b"x" * 100
    assert all(server._send_ud == 0 for server, _ in pairs)


def test_what_a_direct_send_leaves_waits_for_write_space_and_arrives_whole(request):
    group = netimpl.SockGroup()
    request.addfinalizer(group.close)
    server, client = pair(request, group, lambda g, s: None)
    server._s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    gi = gi_of(group)
    data = bytes(range(256)) * 4096  # 1 MiB: far more than the kernel takes at once
    done: list[int] = []
    group.poll(timeout=0)
    ops = gi._ring_sends
    server.writev_async(netimpl.Request([data], lambda r, st: done.append(st)))
    group.poll(timeout=0)
    assert not done and server._out_armed, "not waiting for write space"
    assert gi._ring_sends == ops and server._send_ud == 0, "a SEND was made on a full socket"
    assert 0 < server.stats.bytes_sent < len(data)
    got = bytearray()
    buf = bytearray(65536)
    while not done or len(got) < len(data):
        group.poll(timeout=0.01)
        n = client.recv_into(buf)
        if n:
            got += buf[:n]
    assert done == [0] and bytes(got) == data and server.stats.bytes_sent == len(data)
    assert not server._out_armed
    assert {ud for ud, op in gi._ops.items() if op[0] == ugroup.SEND} == {s._write_ud for s in gi.socks}


def test_a_poll_whose_first_flush_completes_a_request_does_not_sleep(request):
    """A request queued outside poll is sent by the next poll's first step; that poll returns at once."""
    group = netimpl.SockGroup()
    request.addfinalizer(group.close)
    server, client = pair(request, group, lambda g, s: None)
    group.poll(timeout=0)
    done: list[int] = []
    server.writev_async(netimpl.Request([b"outside"], lambda r, st: done.append(st)))
    t0 = time.monotonic()
    group.poll(timeout=5)
    assert done == [0], "the request did not complete in the poll"
    assert time.monotonic() - t0 < 2.5, "poll slept through its timeout after completing a request"


def test_what_a_direct_sends_callback_queues_elsewhere_leaves_in_the_same_flush(request):
    group = netimpl.SockGroup()
    request.addfinalizer(group.close)
    done: list[str] = []
    (b, b_client) = pair(request, group, lambda g, s: None)

    def on_read(g, s):
        if s.recv_into(bytearray(64)):
            # The reply's callback (run by the flush's sendmsg) queues a request on another socket.
            s.writev_async(netimpl.Request([b"a"], lambda r, st: (
                done.append("a"),
                b.writev_async(netimpl.Request([b"b"], lambda r2, st2: done.append("b"))))))

    a, a_client = pair(request, group, on_read)
    group.poll(timeout=0)
    a_client.writev([b"go"])
    deadline = time.monotonic() + 5
    while not done and time.monotonic() < deadline:
        group.poll(timeout=0.05)
    assert done == ["a", "b"], done  # both in the poll that read the request
    got = bytearray(8)
    poll_until(group, lambda: b_client.recv_into(got) is not None)
    assert got[:1] == b"b"
