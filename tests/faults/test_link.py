"""Every byte through a lossy, reordering, duplicating, corrupting link, both ways, with zero-copy on (IPv4 and IPv6)."""

from __future__ import annotations

import hashlib

import pytest

from .conftest import backend_params, backends_of, scale
from .peers import EchoServer, Peers, echo_client, stream

IMPAIRMENTS = {
    "lossy": {"loss": 0.02, "duplicate": 0.01, "reorder": 0.02, "corrupt": 0.01, "delay": 0.0005, "jitter": 0.001},
    "corrupting": {"corrupt": 0.05, "duplicate": 0.03},
    "blackout": {"loss": 0.01, "reorder": 0.01},   # and, a moment after the start, 1.5 s of total loss
}
IMPAIRMENTS["lossy-ipv6"] = IMPAIRMENTS["lossy"]


@pytest.mark.parametrize("kind", list(IMPAIRMENTS))
@pytest.mark.parametrize("impl", backend_params())
def test_every_byte_arrives_both_ways_through_an_impaired_link(link, ledger, impl, kind):
    backends = backends_of(impl)
    nbytes = scale(3 << 20, 48 << 20)
    clients = 2 * len(backends) if impl == "mixed" else 2
    host = link.server_ip6 if kind.endswith("-ipv6") else link.server_ip
    server = EchoServer(backends, host)
    peers = Peers(link)
    try:
        seed = len(kind) * 1000 + len(impl)
        link.impair(seed=seed, **IMPAIRMENTS[kind])
        for i in range(clients):
            peers.start(echo_client, host, server.ports[i % len(server.ports)], nbytes, 100 + i)
        if kind == "blackout":
            server.poll_until(lambda: sum(server.nreceived.values()) > nbytes // 4, timeout=10)
            link.impair(loss=1.0, seed=seed)
            server.poll_until(lambda: False, timeout=1.5)
            link.impair(seed=seed, **IMPAIRMENTS[kind])
            ledger.fault(impl, "link blackout 1.5 s")
        server.poll_until(lambda: all(p.poll() for p in peers.pipes), timeout=scale(60, 300))
        # every echo request completes (zero-copy: once the kernel released its pages)
        server.poll_until(lambda: len(server.statuses) == server.queued, timeout=10)
        results = [r or {"error": "no report in time"} for r in peers.reports(0)]
        assert len(server.conns) == clients
        assert {s.impl_name for s in server.conns} == set(backends)
        assert all(s.zerocopy for s in server.conns), "zero-copy should be in force on the veth"
        assert all(s.is_ipv6() == kind.endswith("-ipv6") for s in server.conns)
        for i, r in enumerate(results):
            assert not r["error"], f"client {i}: {r}"
            assert r["mismatch"] == -1, f"client {i}: echo differs from what it sent at offset {r['mismatch']}"
            assert r["sent"] == r["received"] == nbytes, (i, r)
        # what the server received, hashed per connection, is what some client sent
        sent = {hashlib.sha256(stream(100 + i, nbytes)).hexdigest() for i in range(clients)}
        assert {h.hexdigest() for h in server.received.values()} == sent
        assert not server.errors, server.errors
        assert len(server.statuses) == server.queued, f"{server.queued - len(server.statuses)} requests never completed"
        assert set(server.statuses) == {0}, "an echo request failed"
        zc = sum(s.stats.zerocopy_sends for s in server.conns)
        assert zc > 0, "no send went the zero-copy path"
        ledger.verified(impl, 2 * clients * nbytes)
    finally:
        counters = link.impair()    # the link is clean again for the next case
        server.close()
        peers.close()
    assert counters.frames > 0 and counters.faults > 0, "the relay injected nothing"
    if kind == "blackout":
        return
    if kind.startswith("lossy"):
        assert counters.lost and counters.duplicated and counters.reordered and counters.corrupted, counters
