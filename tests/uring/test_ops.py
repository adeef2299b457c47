"""The uring group's op table: every entry it makes, it drops."""

from __future__ import annotations

import netimpl


def test_ops_table_is_empty_once_the_sockets_leave(request):
    lsock = netimpl.listen("127.0.0.1", 0, impl="uring")
    request.addfinalizer(lsock.close)
    client = netimpl.connect("127.0.0.1", lsock.getaddr()[1], impl="uring")
    server = None
    while server is None:
        server = lsock.accept()
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
    assert len(gi._ops) == 3  # the two sockets' polls, and the group's write-space poll
    for s in (server, client):
        group.remove_sock(s)
        s.close()
    assert list(gi._ops) == [gi._out_ud] and gi._inflight == {}  # only the group's own entry is left
    group.close()
