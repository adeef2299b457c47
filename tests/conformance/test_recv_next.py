"""Conformance: Sock.recv_next, the receive that hands out the backend's own buffers."""

from __future__ import annotations

import errno
import socket
import struct

import pytest

from tests.conformance.conftest import pattern, wait_for


def _serve(net, mixed, on_view):
    """(group, server, client): the server in a group whose read callback feeds ``on_view`` every
    view recv_next gives, then ``on_view(None)`` once for EOF (the socket then leaves the group)."""
    g = net.group(mixed)
    client, server = net.pair()

    def on_read(grp, sock):
        while True:
            view = sock.recv_next()
            if view is None:
                return
            if not view:
                assert view == b"" and len(view) == 0
                grp.remove_sock(sock)
                on_view(None)
                return
            on_view(view)

    g.add_sock(server, on_read)
    return g, server, client


def test_every_byte_arrives_once_and_in_order_then_eof(net, mixed):
    got: list = []
    ended = []
    g, server, client = _serve(net, mixed, lambda v: ended.append(1) if v is None else got.append(bytes(v)))
    data = pattern(1 << 20, 3)
    for i in range(0, len(data), 100_000):  # bursts of every size relative to the backend's buffers
        chunk = memoryview(data)[i:i + 100_000]
        while chunk:
            n = client.writev([chunk])
            chunk = chunk[n or 0:]
            g.poll(timeout=0.001)
    client.close()
    wait_for(lambda: ended, lambda: g.poll(timeout=0.01))
    assert b"".join(got) == data and ended == [1]
    assert server.stats.bytes_received == len(data)
    assert server.recv_next() == b""  # EOF stays EOF


def test_views_are_read_only_and_outlive_more_data_the_socket_and_the_group(net, mixed):
    held: list = []
    ended = []
    g, server, client = _serve(net, mixed, lambda v: ended.append(1) if v is None else held.append(v))
    data = pattern(300_000, 5)
    client.writev([data])
    client.close()
    wait_for(lambda: ended, lambda: g.poll(timeout=0.01))
    with pytest.raises(TypeError):
        held[0][0] = 0
    assert all(v.readonly for v in held)
    server.close()
    net.groups.remove(g)
    for s in list(g.socks):
        g.remove_sock(s)
    g.close()
    assert b"".join(bytes(v) for v in held) == data  # still there, unchanged, after the group is gone
    for v in held:
        v.release()


def test_recv_into_and_recv_next_share_one_stream(net, mixed):
    out = bytearray()
    ended = []
    g = net.group(mixed)
    client, server = net.pair()
    turn = [0]

    def on_read(grp, sock):
        while True:
            turn[0] += 1
            if turn[0] % 2:
                view = sock.recv_next()
                n = None if view is None else len(view)
                if view:
                    out.extend(view)
            else:
                buf = bytearray(1000)
                n = sock.recv_into(buf)
                if n:
                    out.extend(buf[:n])
            if n is None:
                return
            if n == 0:
                grp.remove_sock(sock)
                ended.append(1)
                return

    g.add_sock(server, on_read)
    data = pattern(200_000, 9)
    client.writev([data])
    client.close()
    wait_for(lambda: ended, lambda: g.poll(timeout=0.01))
    assert bytes(out) == data


def test_outside_a_group_the_recv_pipe_comes_first_and_would_block_is_none(net):
    client, server = net.pair()
    assert server.recv_next() is None
    data = pattern(5000, 1)
    client.writev([data])
    buf = bytearray(10)
    wait_for(lambda: server.recv_into(buf) is not None)  # a small read: the rest waits in the recv pipe
    rest = bytearray()
    wait_for(lambda: (v := server.recv_next()) is not None and (rest.extend(v) or len(rest) >= len(data) - 10))
    assert bytes(buf) + bytes(rest) == data
    assert server.recv_next() is None


def test_bytes_before_a_reset_come_first_then_the_error_then_eof(net, mixed):
    got = bytearray()
    ends: list = []
    g = net.group(mixed)
    client, server = net.pair()
    reading = [False]

    def on_read(grp, sock):
        if not reading[0]:
            return
        while True:
            try:
                view = sock.recv_next()
            except OSError as exc:
                ends.append(exc.errno)
                return
            if view is None:
                return
            if not view:
                ends.append(0)
                grp.remove_sock(sock)
                return
            got.extend(view)

    g.add_sock(server, on_read)
    data = pattern(50_000, 4)
    client.writev([data])
    wait_for(lambda: server._has_buffered() or _kernel_readable(server), lambda: g.poll(timeout=0.01))
    g.poll(timeout=0.01)
    client._s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()
    reading[0] = True
    wait_for(lambda: 0 in ends, lambda: g.poll(timeout=0.01))
    assert bytes(got) == data
    assert ends == [errno.ECONNRESET, 0]


def _kernel_readable(sock) -> bool:
    import select

    return bool(select.select([sock.fileno()], [], [], 0)[0])


def test_after_close_it_raises_ebadf(net):
    _client, server = net.pair()
    server.close()
    with pytest.raises(OSError) as err:
        server.recv_next()
    assert err.value.errno == errno.EBADF

