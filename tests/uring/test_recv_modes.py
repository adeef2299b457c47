"""Direct receive: a socket whose reads return a provided buffer's worth or more on average
leaves the multishot receive for a multishot readiness poll and recv(2) into the caller's
buffer, and goes back once they average under a quarter of one (``ni_rxq_note`` in ring.h).
Nothing is lost, duplicated or reordered across either switch; pause, removal and EOF behave
as in the buffers' mode."""

from __future__ import annotations

import errno
import fcntl
import select
import socket
import struct
import termios
import time

import pytest

import netimpl
from tests.uring.test_multishot import gi_of, pair, payload, poll_until

SIZE = 1024  # bytes per provided buffer in these tests
BIG = 256 * 1024  # the reads' buffer: room for many provided buffers' worth


def _queued(sock) -> int:
    """Bytes waiting in the socket's kernel receive queue (FIONREAD)."""
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0" * 4))[0]


def _send(client, data: bytes) -> None:
    assert client.writev([data]) == len(data)


class Reader:
    """A read callback into BIG buffers: what it got, the None reads, where EOF came."""

    def __init__(self) -> None:
        self.got = bytearray()
        self.reading = True
        self.nones = 0
        self.eof_at: int | None = None

    def __call__(self, g, s) -> None:
        if not self.reading:
            return
        buf = bytearray(BIG)
        n = s.recv_into(buf)
        if n is None:
            self.nones += 1
        elif n:
            self.got += buf[:n]
        else:
            self.eof_at = len(self.got)
            g.remove_sock(s)


def _send_unread(server, client, rd: Reader, sent: bytearray, data: bytes) -> bytes:
    """Stop rd reading, send ``data`` and wait until it is in the server's socket."""
    rd.reading = False
    _send(client, data)
    sent += data
    assert select.select([server.fileno()], [], [], 2)[0]
    return data


def _streamed_pair(request, small_buffers, rounds: int, until=None):
    """A server in a group, read with BIG buffers, sent up to ``rounds`` chunks of 8 buffers'
    worth (each read before the next goes) or until ``until(rxq)``; its client, the group, its
    Reader and every byte sent (all of it read)."""
    small_buffers(64, SIZE)
    group = netimpl.SockGroup()
    request.addfinalizer(group.close)
    rd = Reader()
    server, client = pair(request, group, rd)
    sent = bytearray()
    for seed in range(rounds):
        chunk = payload(8 * SIZE, seed)
        _send(client, chunk)
        sent += chunk
        poll_until(group, lambda: len(rd.got) == len(sent))
        if until is not None and until(server._rxq):
            break
    else:
        assert until is None, "large reads never switched the socket to direct receive"
    assert bytes(rd.got) == bytes(sent)
    return server, client, group, rd, sent


def _direct_pair(request, small_buffers):
    """_streamed_pair, streamed until the server is in direct receive."""
    return _streamed_pair(request, small_buffers, 64, lambda q: q.poll and q.armed)


def test_large_reads_switch_to_direct_receive_and_small_ones_back(request, small_buffers):
    server, client, group, rd, sent = _direct_pair(request, small_buffers)
    q = server._rxq
    assert q.switches == 1 and q.bulk == 1
    direct = q.direct
    more = payload(40 * SIZE, 99)  # read by recv(2) into the callback's buffer now
    _send(client, more)
    sent += more
    poll_until(group, lambda: len(rd.got) == len(sent))
    assert bytes(rd.got) == bytes(sent)
    assert q.direct - direct == len(more) and q.bytes == 0

    # Small messages, one at a time: a system call each in direct receive, so back to the buffers.
    for i in range(80):
        msg = payload(100, i)
        _send(client, msg)
        sent += msg
        poll_until(group, lambda: len(rd.got) == len(sent))
        if not q.poll and q.armed:
            break
    assert q.switches == 2 and q.bulk == 0 and not q.poll and q.armed
    assert bytes(rd.got) == bytes(sent)
    direct = q.direct
    msg = payload(300, 7)
    _send(client, msg)
    sent += msg
    poll_until(group, lambda: len(rd.got) == len(sent))
    assert bytes(rd.got) == bytes(sent) and q.direct == direct  # through the buffers again
    assert rd.eof_at is None


def test_direct_recv_off_keeps_the_buffers(request, small_buffers):
    netimpl.set_impl_opts("uring", direct_recv=False)  # (the fixture restores the options)
    server, _, _, _, _ = _streamed_pair(request, small_buffers, 40)
    q = server._rxq
    assert q.switches == 0 and not q.poll and q.armed


def test_a_paused_socket_in_direct_receive_leaves_what_comes_in_the_kernel(request, small_buffers):
    server, client, group, rd, sent = _direct_pair(request, small_buffers)
    group.pause_reading(server)
    poll_until(group, lambda: not server._rxq.armed)  # its poll is cancelled
    later = payload(5 * SIZE, 50)
    _send(client, later)
    sent += later
    assert select.select([server.fileno()], [], [], 2)[0]
    for _ in range(5):
        group.poll(timeout=0.02)
    assert len(rd.got) == len(sent) - len(later)  # no callback while paused
    assert server._rxq.bytes == 0 and not server._rxq.armed
    assert select.select([server.fileno()], [], [], 0)[0]  # the bytes wait in the socket
    group.resume_reading(server)
    poll_until(group, lambda: len(rd.got) == len(sent))
    assert bytes(rd.got) == bytes(sent) and server._rxq.poll and server._rxq.armed


def test_removed_in_direct_receive_it_reads_on_in_order_outside_the_group(request, small_buffers):
    server, client, group, rd, sent = _direct_pair(request, small_buffers)
    later = _send_unread(server, client, rd, sent, payload(6 * SIZE, 60))
    group.poll(timeout=0.02)  # a report the callback leaves unread
    group.remove_sock(server)
    assert server._rxq is None and server not in gi_of(group)._inflight
    buf = bytearray(BIG)
    got = rd.got
    while len(got) < len(sent):
        assert select.select([server.fileno()], [], [], 2)[0]
        n = server.recv_into(buf)
        if n:
            got += buf[:n]
    assert bytes(got) == bytes(sent)


def test_eof_in_direct_receive_comes_after_the_bytes(request, small_buffers):
    server, client, group, rd, sent = _direct_pair(request, small_buffers)
    last = payload(3 * SIZE, 70)
    _send(client, last)
    sent += last
    client._s.shutdown(socket.SHUT_WR)  # the FIN after the bytes
    poll_until(group, lambda: rd.eof_at is not None)
    assert rd.eof_at == len(sent) and bytes(rd.got) == bytes(sent)


def test_a_readiness_report_a_read_already_took_gives_none_and_loses_nothing(request, small_buffers):
    server, client, group, rd, sent = _direct_pair(request, small_buffers)
    more = _send_unread(server, client, rd, sent, payload(2 * SIZE, 80))
    buf = bytearray(BIG)
    n = server.recv_into(buf)  # outside any callback, before the poll's report is reaped
    assert n == len(more)
    rd.got += buf[:n]
    assert not server._has_buffered()  # drained: nothing for the group to serve again
    rd.reading = True
    for _ in range(5):
        group.poll(timeout=0.02)
    assert bytes(rd.got) == bytes(sent)
    assert rd.nones <= 1  # at most the one report that read took, answered None
    assert not server._has_buffered() and server._rxq.poll and server._rxq.armed


def test_a_poll_is_refused_while_the_receive_or_poll_is_armed(request, small_buffers):
    server, _, group, _, _ = _direct_pair(request, small_buffers)
    ring = gi_of(group).ring
    pending = ring.sq_pending()
    with pytest.raises(OSError) as exc:
        ring.prep_rxq_poll(server._rxq)  # its poll is armed: a second would report every wake-up twice
    assert exc.value.errno == errno.EALREADY and ring.sq_pending() == pending


def test_a_reset_in_direct_receive_is_raised_once_then_eof(request, small_buffers):
    server, client, group, rd, sent = _direct_pair(request, small_buffers)
    rd.reading = False
    client._s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()
    assert select.select([server.fileno()], [], [], 2)[0]
    poll_until(group, lambda: server._has_buffered())  # the poll reported it: served without a new event
    buf = bytearray(BIG)
    with pytest.raises(ConnectionResetError):
        server.recv_into(buf)
    assert server.recv_into(buf) == 0 and server._rxq.poll
    assert bytes(rd.got) == bytes(sent)


def test_recv_next_in_direct_receive_reads_as_much_as_posix_does(request, small_buffers):
    """With no buffers held, a view is one recv(2) of up to RECV_NEXT_SIZE, not a provided
    buffer's worth: a stream goes in as few calls as on posix, every byte in order."""
    from netimpl.sock import RECV_NEXT_SIZE

    server, client, group, rd, sent = _direct_pair(request, small_buffers)
    rd.reading = False
    more = payload(3 * RECV_NEXT_SIZE, 17)
    _send(client, more)
    deadline = time.monotonic() + 5
    while _queued(server) < RECV_NEXT_SIZE:  # a view's most in the socket: the first read takes it
        assert time.monotonic() < deadline, "the stream did not arrive"
        time.sleep(0.001)
    got = bytearray()
    sizes = []
    while len(got) < len(more):
        assert select.select([server.fileno()], [], [], 2)[0]
        view = server.recv_next()
        if view is None:
            continue
        assert view, "EOF before the stream's end"
        sizes.append(len(view))
        got += view
        view.release()
    assert bytes(got) == more
    assert max(sizes) == RECV_NEXT_SIZE > SIZE  # reads of more than one provided buffer
    assert server._rxq.poll and server._rxq.bytes == 0  # still in direct receive, nothing held
