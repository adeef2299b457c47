"""Zero-copy over a real (non-loopback) path: a veth pair into a network namespace."""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import socket
import time

import pytest

import netimpl
from tests.conftest import available_impls
from tests.zerocopy_check import POISON, send_poisoned


def _peer_reader(host: str, port: int, conn) -> None:
    """In the namespace: connect, read to EOF, report length, digest and whether poison was seen."""
    s = socket.create_connection((host, port), timeout=30)
    h = hashlib.sha256()
    n = 0
    poisoned = False
    buf = bytearray(1 << 20)
    while True:
        k = s.recv_into(buf)
        if not k:
            break
        n += k
        h.update(memoryview(buf)[:k])
        poisoned = poisoned or POISON in memoryview(buf)[:k]
    conn.send((n, h.hexdigest(), poisoned))
    s.close()


def _serve_peer(veth, impl):
    """Listen on the host end; a reader in the namespace connects. Returns (lsock, server, pipe, process)."""
    lsock = netimpl.listen(veth.host_ip, 0, impl=impl)
    parent, child = mp.get_context("fork").Pipe()
    proc = veth.run_in_ns(_peer_reader, veth.host_ip, lsock.getaddr()[1], child)
    server = None
    deadline = time.monotonic() + 10
    while server is None and time.monotonic() < deadline:
        server = lsock.accept()
        time.sleep(0.001)
    assert server is not None, "the peer in the namespace did not connect"
    return lsock, server, parent, proc


@pytest.mark.parametrize("impl", available_impls())
def test_zero_copy_over_veth_every_request_completes_once_and_every_byte_arrives(veth, impl):
    lsock, server, parent, proc = _serve_peer(veth, impl)
    try:
        assert server.getaddr()[0] == veth.host_ip
        assert server.zerocopy, "zero-copy should be in force on a non-loopback interface"
        group = netimpl.SockGroup()
        group.add_sock(server, lambda g, s: None)
        nreqs, size = 48, 512 * 1024
        statuses, digest = send_poisoned(server, group, nreqs, size)
        assert statuses == [0] * nreqs
        stats = server.stats
        assert stats.zerocopy_sends > 0 and stats.requests_completed == nreqs
        group.remove_sock(server)
        server.close()
        group.close()
        n, peer_digest, poisoned = parent.recv()
        assert not poisoned, "a buffer was handed back while the kernel still read it"
        assert n == nreqs * size and peer_digest == digest
        # Delivery to a local socket (any namespace) copies the pages on receive
        # (skb_orphan_frags_rx), and the kernel reports that honestly.
        print(f"{impl}: zero-copy sends {stats.zerocopy_sends}, reported copied {stats.zerocopy_copied}")
    finally:
        server.close()
        lsock.close()
        proc.join(10)


@pytest.mark.parametrize("impl", available_impls())
def test_close_over_veth_with_zero_copy_in_flight(veth, impl):
    lsock, server, parent, proc = _serve_peer(veth, impl)
    group = netimpl.SockGroup()
    group.add_sock(server, lambda g, s: None)
    try:
        assert server.zerocopy
        statuses, _ = send_poisoned(server, group, 64, 512 * 1024, close_early=True)
        assert statuses.count(0) > 0 and set(statuses) <= {0, 125}
        n, _digest, poisoned = parent.recv()
        assert not poisoned, "a buffer was handed back while the kernel still read it"
        assert n >= statuses.count(0) * 512 * 1024
    finally:
        server.close()
        group.close()
        lsock.close()
        proc.join(10)
