"""The uring group's op table: every entry it makes, it drops."""

from __future__ import annotations

import netimpl


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

    def on_read(g, s):
        buf = bytearray(4096)
        n = s.recv_into(buf)
        if n:
            got.extend(buf[:n])

    group.add_sock(server, on_read)
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
