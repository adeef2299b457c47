"""The uring group's op table: every entry it makes, it drops."""

from __future__ import annotations

import errno

import netimpl
from tests.uring.test_multishot import reader


def _pair(request):
    """A connected pair of uring sockets: (client, server)."""
    lsock = netimpl.listen("127.0.0.1", 0, impl="uring")
    request.addfinalizer(lsock.close)
    client = netimpl.connect("127.0.0.1", lsock.getaddr()[1], impl="uring")
    server = None
    while server is None:
        server = lsock.accept()
    return client, server


def test_ops_table_is_empty_once_the_sockets_leave(request):
    client, server = _pair(request)
    group = netimpl.SockGroup()
    got = bytearray()
    group.add_sock(server, reader(got))
    group.add_sock(client, lambda g, s: None)
    gi = server._group_impl
    for i in range(50):  # many readiness events and sends: the poll's one user_data is re-armed each time
        client.writev_async(netimpl.Request([b"%04d" % i]))
        want = 4 * (i + 1)
        while len(got) < want:
            group.poll(timeout=1.0)
    assert bytes(got) == b"".join(b"%04d" % i for i in range(50))
    # each socket's poll and the entry of its write tasks, and the group's write-space poll
    assert set(gi._ops) == {server._poll_ud, server._write_ud, client._poll_ud, client._write_ud, gi._out_ud}
    for s in (server, client):
        group.remove_sock(s)
        s.close()
    assert list(gi._ops) == [gi._out_ud] and gi._inflight == {}  # only the group's own entry is left
    group.close()


def test_ring_sends_make_no_op_entry_of_their_own(request):
    """A plain write task goes out under its socket's one entry (_write_ud): no user_data, tuple or
    in-flight count is made and dropped per send, and the bytes arrive whole and in order."""
    a, b = _pair(request)
    group = netimpl.SockGroup()
    got = {a: bytearray(), b: bytearray()}

    def on_read(g, s):
        buf = bytearray(65536)
        n = s.recv_into(buf)
        if n:
            got[s].extend(buf[:n])

    group.add_sock(a, on_read)
    group.add_sock(b, on_read)
    gi = a._group_impl
    group.poll(timeout=0)  # the receives armed: their user_data are made once
    entries, next_ud = dict(gi._ops), gi._next_ud
    sent = {a: bytearray(), b: bytearray()}
    ring_sends = 0
    for i in range(200):
        for s in (a, b):  # two sockets dirty in one pass: the flush sends on the ring, not by sendmsg(2)
            data = b"%s%05d" % (b"a" if s is a else b"b", i) * 50
            sent[s].extend(data)
            s.writev_async(netimpl.Request([data]))
        gi._prep_dirty()
        # in flight under the socket's own entry (a send still in flight from the last pass: the next waits)
        assert a._send_ud in (0, a._write_ud) and b._send_ud in (0, b._write_ud)
        ring_sends += (a._send_ud != 0) + (b._send_ud != 0)
        group.poll(timeout=0)
    while len(got[a]) < len(sent[b]) or len(got[b]) < len(sent[a]):
        group.poll(timeout=0.1)
    assert bytes(got[a]) == bytes(sent[b]) and bytes(got[b]) == bytes(sent[a])
    assert ring_sends > 100 and a._send_ud == 0 and b._send_ud == 0
    assert gi._next_ud == next_ud and gi._ops == entries
    assert gi._inflight == {a: 1, b: 1}  # each one's multishot receive, and no send among them
    for s in (a, b):
        group.remove_sock(s)
        s.close()
    assert list(gi._ops) == [gi._out_ud] and gi._inflight == {}
    group.close()


def test_a_socket_a_flush_callback_moves_to_another_group_is_sent_by_that_group_alone(request, caplog):
    """A flush of two sockets: the first one's request callback moves the second to another group and
    queues on it there. The first group's flush leaves it (its snapshot is stale), and the second
    group sends the bytes, once, under its own op table."""
    caplog.set_level("WARNING", logger="netimpl")
    a, a_peer = _pair(request)
    b, b_peer = _pair(request)
    g1, g2 = netimpl.SockGroup(), netimpl.SockGroup()
    request.addfinalizer(g2.close)
    request.addfinalizer(g1.close)
    for s in (a, b, a_peer, b_peer):
        request.addfinalizer(s.close)
    g1.add_sock(a, lambda g, s: None)
    g1.add_sock(b, lambda g, s: None)
    gi1 = a._group_impl
    warm = bytearray(8)
    for s in (a, b):
        s.writev_async(netimpl.Request([b"w"]))
    gi1._prep_dirty()  # as SENDs (two sockets): the first ring send of each, whose struct Python makes
    for peer in (a_peer, b_peer):
        while not peer.recv_into(warm):
            g1.poll(timeout=0.01)
    assert gi1._ring_sends == 2
    statuses: list[tuple[str, int]] = []

    def move_b(req, status):
        statuses.append(("a", status))
        g1.remove_sock(b)  # b's queued request is cancelled
        g2.add_sock(b, lambda g, s: None)
        b.writev_async(netimpl.Request([b"moved"], cb=lambda r, st: statuses.append(("b2", st))))

    a.writev_async(netimpl.Request([b""], cb=move_b))  # nothing to send: completes inside the flush
    b.writev_async(netimpl.Request([b"first"], cb=lambda r, st: statuses.append(("b1", st))))
    g1.poll(timeout=0)  # two dirty sockets: a ring flush, whose snapshot still names b
    got = bytearray()
    buf = bytearray(64)
    for _ in range(200):
        g2.poll(timeout=0.01)
        n = b_peer.recv_into(buf)
        if n:
            got += buf[:n]
        if got == b"moved" and ("b2", 0) in statuses:
            break
    assert bytes(got) == b"moved"
    assert statuses == [("a", 0), ("b1", errno.ECANCELED), ("b2", 0)]
    assert b._group_impl is not gi1 and b not in gi1._dirty and b._send_ud == 0
    assert set(gi1._ops) == {a._poll_ud, a._write_ud, gi1._out_ud}
    assert not [r.getMessage() for r in caplog.records if r.name == "netimpl"]
    g1.remove_sock(a)
    g2.remove_sock(b)
