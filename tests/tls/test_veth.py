"""TLS over a zero-copy inner socket on a real path: a veth pair into a network namespace of the test's own."""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import socket
import ssl
import time

import pytest

import netimpl
from netimpl import tls
from tests.conftest import available_impls
from tests.netns.conftest import veth  # noqa: F401 - the fixture
from tests.tls.conftest import drive


def _tls_reader(host: str, port: int, cafile: str, conn) -> None:
    """In the namespace: a Python ssl client reads the plaintext to EOF and reports its length and digest."""
    ctx = ssl.create_default_context(cafile=cafile)
    with socket.create_connection((host, port), timeout=30) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as s:
        h = hashlib.sha256()
        n = 0
        while True:
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            n += len(chunk)
            h.update(chunk)
    conn.send((n, h.hexdigest()))


@pytest.mark.parametrize("impl", available_impls())
def test_tls_over_a_zero_copy_socket_completes_after_the_kernel_releases(veth, certs, impl):  # noqa: F811
    lsock = netimpl.listen(veth.host_ip, 0, impl=impl)
    parent, child = mp.get_context("fork").Pipe()
    proc = veth.run_in_ns(_tls_reader, veth.host_ip, lsock.getaddr()[1], str(certs.good / "ca-cert.pem"), child)
    group = netimpl.SockGroup()
    try:
        deadline = time.monotonic() + 10
        server = None
        while server is None and time.monotonic() < deadline:
            server = lsock.accept()
            time.sleep(0.001)
        assert server is not None, "the peer in the namespace did not connect"
        assert server.zerocopy, "zero-copy should be in force on a non-loopback interface"
        group.add_sock(server, lambda g, s: s.recv_into(bytearray(4096)))
        ts = tls.wrap(server, tls.server_context(certs.good), server_side=True)
        assert ts.zerocopy
        done: list[tuple[int, int]] = []
        h = hashlib.sha256()
        nreqs = 40
        for i in range(nreqs):
            data = bytes([i]) * (300 * 1024)
            h.update(data)
            ts.writev_async(netimpl.Request([data[:100], data[100:]], lambda r, st, i=i: done.append((i, st))))
        drive(group, lambda: len(done) == nreqs, timeout=30)
        assert done == [(i, 0) for i in range(nreqs)]
        assert ts.inner.stats.zerocopy_sends > 0 and ts.queued_bytes == 0 and ts.inner.queued_bytes == 0
        group.remove_sock(ts)
        ts.close()
        n, digest = parent.recv()
        assert n == nreqs * 300 * 1024 and digest == h.hexdigest()
    finally:
        for s in group.socks:
            group.remove_sock(s)
        group.close()
        lsock.close()
        proc.join(10)
