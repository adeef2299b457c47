"""A zero-copy socket reset by its peer, closed or removed inside the failed requests' callbacks.

Issue 10, defect 1: the failure callbacks ran before the send's op-table
entry held its notification's requests, so the close's cancel-and-wait
dispatched the notification against a flag (``TypeError`` out of ``poll``),
and the group's close waited 5 s and kept its ring.
"""

from __future__ import annotations

import socket
import struct
import time

import pytest

import netimpl
from netimpl.posix.zerocopy import ZcTracker
from netimpl.uring import group as ugroup


@pytest.mark.parametrize("how", ["close", "remove"])
def test_peer_reset_with_requests_queued_closed_from_the_failure_callback(how, monkeypatch):
    monkeypatch.setattr(ugroup, "_abandoned", [])
    lsock = netimpl.listen("127.0.0.1", 0, impl="uring")
    peer = socket.create_connection(("127.0.0.1", lsock.getaddr()[1]))
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    server = None
    while server is None:
        server = lsock.accept()
    lsock.close()
    server.set_sendbuf(65536)
    # Loopback never uses zero-copy by policy; IORING_OP_SENDMSG_ZC itself works there (it copies),
    # which is all this test needs: the send/notification CQE pair and its op-table entry.
    server._zc = ZcTracker()
    assert server._impl.zerocopy_opcode, "this kernel's io_uring lacks SENDMSG_ZC"
    group = netimpl.SockGroup()
    group.add_sock(server, lambda g, s: None)
    statuses: list[int] = []

    def failed(req, status):
        statuses.append(status)
        if status and server.group is group:
            if how == "close":
                server.close()
            else:
                group.remove_sock(server)
                server.close()

    for _ in range(16):
        server.writev_async(netimpl.Request([bytes(256 * 1024)], failed))
    for _ in range(20):
        group.poll(timeout=0.01)  # the send buffer fills; the rest waits for write space
    assert server._queued and len(statuses) < 16
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.close()  # RST with requests queued
    deadline = time.monotonic() + 5
    while len(statuses) < 16 and time.monotonic() < deadline:
        group.poll(timeout=0.01)
    assert len(statuses) == 16 and any(statuses), statuses
    assert server.closed and group.socks == []
    assert not server._queued and not server._pending
    t0 = time.monotonic()
    group.close()
    assert time.monotonic() - t0 < 1.0, "the group's close waited for notifications it had lost"
    assert ugroup._abandoned == [], "the group kept (leaked) its ring"
