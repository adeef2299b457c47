"""Conformance: the zero-copy policy and kernel zero-copy completions, for every available backend."""

from __future__ import annotations

import errno
import hashlib
import threading
import time

import pytest

import netimpl
from netimpl import features
from tests.conformance.conftest import read_all, wait_for
from tests.conftest import need
from tests.zerocopy_check import POISON, send_poisoned

@pytest.fixture(autouse=True)
def _need_zerocopy():
    need(features.zerocopy_reason())


def test_loopback_never_uses_zero_copy(impl, net):
    netimpl.set_impl_opts(impl, enable_zerocopy_send_client=True)
    try:
        client, server = net.pair()
    finally:
        netimpl.set_impl_opts(impl, enable_zerocopy_send_client=False)
    assert not client.zerocopy and not server.zerocopy


@pytest.fixture
def loopback_zerocopy(monkeypatch):
    """Take loopback for a real interface, so the policy allows zero-copy on 127.0.0.1."""
    import netimpl.tcp

    monkeypatch.setattr(netimpl.tcp, "is_loopback_address", lambda host: False)


def _receiver(sock: netimpl.Sock, nbytes: int, out: dict) -> None:
    out["data"] = read_all(sock, nbytes, timeout=30)


def test_forced_zero_copy_on_loopback_reports_copies_and_hands_nothing_back_early(impl, net, loopback_zerocopy):
    client, server = net.pair()
    assert server.zerocopy and not client.zerocopy  # server policy on, client policy off by default
    group = net.group()
    group.add_sock(server, lambda g, s: None)
    out: dict = {}
    nreqs, size = 64, 256 * 1024
    reader = threading.Thread(target=_receiver, args=(client, nreqs * size, out))
    reader.start()
    statuses, digest = send_poisoned(server, group, nreqs, size)
    reader.join(30)
    assert statuses == [0] * nreqs
    assert hashlib.sha256(out["data"]).hexdigest() == digest
    assert POISON not in out["data"][:1]
    assert server.stats.zerocopy_sends > 0
    # the kernel copies loopback traffic on receive, and says so
    assert server.stats.zerocopy_copied == server.stats.zerocopy_sends


def test_zero_copy_threshold_sends_small_batches_by_copy(impl, net, loopback_zerocopy):
    netimpl.set_impl_opts(impl, zerocopy_threshold=1 << 20)
    try:
        client, server = net.pair()
    finally:
        netimpl.set_impl_opts(impl, zerocopy_threshold=0)
    assert server.zerocopy
    group = net.group()
    group.add_sock(server, lambda g, s: None)
    log = []
    server.writev_async(netimpl.Request([bytes(1000)], cb=lambda r, st: log.append(st)))
    group.poll()
    assert log == [0] and server.stats.zerocopy_sends == 0
    assert read_all(client, 1000) == bytes(1000)


def _read_to_eof(sock: netimpl.Sock, out: dict) -> None:
    data = bytearray()
    buf = bytearray(1 << 16)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            n = sock.recv_into(buf)
        except ConnectionResetError:
            break
        if n == 0:
            break
        if n:
            data += buf[:n]
        else:
            time.sleep(0.0005)
    out["data"] = bytes(data)


def test_close_with_zero_copy_in_flight_waits_for_the_kernel(impl, net, loopback_zerocopy):
    client, server = net.pair()
    # A window smaller than the sender's buffer, but above loopback's 64 KiB MSS (below it TCP
    # would stall on persist-timer probes): most of what is handed over waits in the sender's kernel.
    client.set_recvbuf(256 * 1024)
    group = net.group()
    group.add_sock(server, lambda g, s: None)
    nreqs, size = 32, 256 * 1024
    original = b"".join(bytes([i % 200]) * size for i in range(nreqs))
    statuses: list[tuple[int, int]] = []
    for i in range(nreqs):
        buf = bytearray(original[i * size:(i + 1) * size])
        server.writev_async(netimpl.Request(
            [buf], cb=lambda r, st, i=i, buf=buf: (statuses.append((i, st)), buf.__setitem__(slice(None), bytes([POISON]) * size))))
    group.poll()
    handed = server.stats.bytes_sent
    assert server.stats.zerocopy_sends > 0 and handed < nreqs * size
    server.close()
    assert server.fileno() == -1
    done_at_close = len(statuses)
    assert done_at_close < nreqs, "close handed back buffers the kernel still held"
    out: dict = {}
    reader = threading.Thread(target=_read_to_eof, args=(client, out))
    reader.start()
    wait_for(lambda: len(statuses) == nreqs, lambda: group.poll(timeout=0.01), timeout=30)
    reader.join(30)
    data = out["data"]
    assert len(data) == handed and data == original[:handed], "the peer saw poisoned or missing bytes"
    assert sorted(i for i, _ in statuses) == list(range(nreqs))  # each completed once
    ok = [i for i, st in statuses if st == 0]
    assert ok == list(range(len(ok))) and (len(ok) + 1) * size > handed >= len(ok) * size
    assert all(st in (0, errno.ECANCELED) for _, st in statuses)
