"""recv_into past the provided buffers: once a read has copied out a whole buffer's worth and
has room for another, it receives the rest with recv(2) straight into the caller's buffer, in
order after every held byte, on the ring's own thread only; EOF and errors met there come after
the bytes."""

from __future__ import annotations

import select
import socket
import struct
import threading

import pytest

import netimpl
from netimpl.uring.ring import lib
from tests.uring.test_multishot import gi_of, pair, payload, poll_until

SIZE = 1024  # bytes per provided buffer in these tests


def _holding_pair(request, small_buffers, held: int):
    """A server in a group whose callback does not read, holding ``held`` bytes in its
    provided buffers; its client; the group; the bytes held."""
    small_buffers(64, SIZE)
    group = netimpl.SockGroup()
    server, client = pair(request, group, lambda g, s: None)
    poll_until(group, lambda: server._poll_armed)
    if not gi_of(group).ring.setup_flags & lib.IORING_SETUP_DEFER_TASKRUN:
        group.remove_sock(server)
        group.close()
        pytest.skip("the ring has no DEFER_TASKRUN here: reads never go past the provided buffers")
    first = payload(held, 1)
    client.writev([first])
    poll_until(group, lambda: server._rxq.bytes == held)
    request.addfinalizer(lambda: (group.remove_sock(server), group.close()))
    return server, client, group, first


def _settle(server):
    """Wait until the server's socket itself is readable (what the client sent, its FIN or its
    reset is there), without entering the ring: no buffer takes it meanwhile."""
    assert select.select([server.fileno()], [], [], 2)[0]


def test_bytes_in_the_socket_come_straight_after_the_held_ones(request, small_buffers):
    server, client, _, first = _holding_pair(request, small_buffers, 3 * SIZE)
    later = payload(5000, 2)
    client.writev([later])
    _settle(server)  # in the socket; no enter since, so no buffer took it
    buf = bytearray(64 * 1024)
    n = server.recv_into(buf)
    assert bytes(buf[:n]) == first + later
    assert server._rxq.direct == len(later)
    assert server.stats.syscalls >= 1  # that recv(2) is counted as posix's are
    assert server.recv_into(buf) is None


def test_completions_not_yet_reaped_keep_reads_with_the_buffers(request, small_buffers):
    server, client, group, first = _holding_pair(request, small_buffers, 3 * SIZE)
    gi = gi_of(group)
    later, last = payload(3000, 2), payload(3000, 3)
    client.writev([later])
    _settle(server)
    gi.ring.submit(0)  # an enter that runs the task work: `later` goes into buffers, its CQEs unreaped
    assert gi.ring.cq_ready() > 0
    client.writev([last])
    _settle(server)
    buf = bytearray(64 * 1024)
    # A recv(2) now would hand out `last` before `later`, which waits in the CQ.
    assert server.recv_into(buf) == len(first) and bytes(buf[:len(first)]) == first
    assert server._rxq.direct == 0
    got = bytearray()
    while len(got) < len(later) + len(last):
        group.poll(timeout=0.05)
        n = server.recv_into(buf)
        if n:
            got += buf[:n]
    assert bytes(got) == later + last


def test_a_read_of_less_than_a_whole_buffer_stays_with_the_buffers(request, small_buffers):
    server, client, _, first = _holding_pair(request, small_buffers, SIZE // 2)
    client.writev([payload(5000, 2)])
    _settle(server)
    buf = bytearray(64 * 1024)
    assert server.recv_into(buf) == len(first)  # small messages: no system call per read
    assert bytes(buf[:len(first)]) == first and server._rxq.direct == 0


def test_no_room_for_another_buffer_means_no_direct_read(request, small_buffers):
    server, client, _, first = _holding_pair(request, small_buffers, 3 * SIZE)
    client.writev([payload(5000, 2)])
    _settle(server)
    buf = bytearray(3 * SIZE + SIZE // 2)
    assert server.recv_into(buf) == 3 * SIZE and server._rxq.direct == 0
    assert bytes(buf[:3 * SIZE]) == first


def test_eof_met_past_the_buffers_comes_after_the_bytes(request, small_buffers):
    server, client, _, first = _holding_pair(request, small_buffers, 2 * SIZE)
    client._s.shutdown(socket.SHUT_WR)
    _settle(server)
    buf = bytearray(64 * 1024)
    assert server.recv_into(buf) == len(first) and bytes(buf[:len(first)]) == first
    assert server._has_buffered()  # the EOF: served by the group without a new kernel event
    assert server.recv_into(buf) == 0
    assert server.recv_into(buf) == 0


def test_a_reset_met_past_the_buffers_is_raised_once_after_the_bytes(request, small_buffers):
    server, client, _, first = _holding_pair(request, small_buffers, 2 * SIZE)
    client._s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()
    _settle(server)
    buf = bytearray(64 * 1024)
    assert server.recv_into(buf) == len(first) and bytes(buf[:len(first)]) == first
    with pytest.raises(ConnectionResetError):
        server.recv_into(buf)
    assert server.recv_into(buf) == 0


def test_another_thread_reads_only_what_the_buffers_hold(request, small_buffers):
    server, client, group, first = _holding_pair(request, small_buffers, 3 * SIZE)
    later = payload(5000, 2)
    client.writev([later])
    _settle(server)
    buf = bytearray(64 * 1024)
    out: list = []
    t = threading.Thread(target=lambda: out.append(server.recv_into(buf)))
    t.start()
    t.join()
    # Not the ring's thread: an enter of the ring's may be filling buffers meanwhile.
    assert out == [len(first)] and bytes(buf[:len(first)]) == first and server._rxq.direct == 0
    poll_until(group, lambda: server._rxq.bytes == len(later))
    assert server.recv_into(buf) == len(later) and bytes(buf[:len(later)]) == later


def test_a_stream_read_with_a_large_buffer_arrives_whole_and_in_order(request):
    group = netimpl.SockGroup()
    got = bytearray()
    data = payload(8 << 20, 7)

    def on_read(g, s):
        buf = bytearray(4 << 20)  # room past what the buffers hold: the sender keeps the socket full
        n = s.recv_into(buf)
        if n:
            got.extend(buf[:n])

    server, client = pair(request, group, on_read)

    def send():
        mv = memoryview(data)
        while mv:
            n = client._s.send(mv[:1 << 20])
            mv = mv[n:]

    client._s.setblocking(True)
    t = threading.Thread(target=send, daemon=True)
    t.start()
    poll_until(group, lambda: len(got) == len(data), timeout=20)
    t.join()
    assert bytes(got) == data
    if gi_of(group).ring.setup_flags & lib.IORING_SETUP_DEFER_TASKRUN:
        assert server._rxq.direct > 0  # a stream this fast is read past the buffers, some of it
    group.remove_sock(server)
    group.close()
