"""The request life cycle over TLS, scripted: an in-memory inner socket (zero-copy or not) and an
in-memory OpenSSL peer, so that which ciphertext send carries which plaintext request, and when the
"kernel" releases it, is the test's to decide."""

from __future__ import annotations

import errno
import ssl

import pytest

import netimpl
from netimpl import tls
from tests.fakeimpl import FakeSock


class WireSock(FakeSock):
    """FakeSock that can also be read from (``rx``) and written to directly."""

    def __init__(self, zerocopy: bool) -> None:
        super().__init__(zerocopy)
        self.rx = bytearray()

    def _readv(self, bufs):
        if not self.rx:
            return None
        n = 0
        for b in bufs:
            take = min(len(b), len(self.rx))
            b[:take] = self.rx[:take]
            del self.rx[:take]
            n += take
            if not self.rx:
                break
        return n

    def _read_into(self, buf):
        return self._readv([memoryview(buf)])

    def _writev(self, bufs):
        data = b"".join(bytes(b) for b in bufs)
        self.sent += data
        return len(data)


class Peer:
    """An OpenSSL server in memory, at the other end of a WireSock."""

    def __init__(self, certs, wire: WireSock) -> None:
        self.wire = wire
        self.inb, self.outb = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = tls.server_context(certs.good).wrap_bio(self.inb, self.outb, server_side=True)
        self.got = bytearray()

    def pump(self) -> None:
        if self.wire.sent:
            self.inb.write(bytes(self.wire.sent))
            self.wire.sent.clear()
        try:
            self.obj.do_handshake()
            while True:
                self.got += self.obj.read(1 << 20)
        except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
            pass
        self.wire.rx += self.outb.read()


@pytest.fixture(params=[True, False], ids=["zerocopy", "copy"])
def scripted(request, certs):
    wire = WireSock(zerocopy=request.param)
    peer = Peer(certs, wire)
    tc = tls.wrap(wire, tls.client_context(certs.good), server_side=False, server_hostname="localhost")
    for _ in range(10):
        peer.pump()
        tc.recv_into(bytearray(100))
        for i in range(len(wire.zc_sends)):
            wire.release(i)  # the handshake's records
    assert tc.established
    wire.zc_sends.clear()
    yield tc, wire, peer
    tc.close()


def test_a_request_completes_only_when_every_record_carrying_it_is_released(scripted):
    tc, wire, peer = scripted
    done: list[tuple[int, int]] = []
    big = bytes(range(256)) * 1200  # 300 KiB: two ciphertext requests (BATCH is 256 KiB)
    tc.writev_async(netimpl.Request([big], lambda r, st: done.append((0, st))))
    tc.writev_async(netimpl.Request([b"tail"], lambda r, st: done.append((1, st))))
    tc.flush()
    peer.pump()
    assert bytes(peer.got) == big + b"tail"  # every byte is with the peer...
    if wire.zc:
        assert done == [] and tc.queued_bytes == len(big) + 4  # ...but the kernel still holds the pages
        assert len(wire.zc_sends) == 1 and len(wire.zc_sends[0]) == 2  # one send of the two ciphertext requests
        wire.release(0)
    assert done == [(0, 0), (1, 0)] and tc.queued_bytes == 0


def test_requests_spread_over_sends_complete_in_order_as_the_sends_are_released(scripted):
    tc, wire, peer = scripted
    done: list[tuple[int, int]] = []
    for i in range(6):
        tc.writev_async(netimpl.Request([bytes([i]) * 90_000], lambda r, st, i=i: done.append((i, st))))
    flushes = 0
    while tc._queued or wire._queued:
        wire.budget = 100_000  # the "kernel" takes 100 kB per flush
        tc.flush()
        flushes += 1
    assert flushes >= 5
    if wire.zc:
        assert done == []
        for i in reversed(range(len(wire.zc_sends))):  # released last first: the order still holds
            wire.release(i)
    assert done == [(i, 0) for i in range(6)]
    peer.pump()
    assert bytes(peer.got) == b"".join(bytes([i]) * 90_000 for i in range(6))


def test_a_send_error_fails_the_requests_it_carried_and_those_behind_in_order(scripted):
    tc, wire, _peer = scripted
    done: list[tuple[int, int]] = []
    tc.writev_async(netimpl.Request([b"a" * 1000], lambda r, st: done.append((0, st))))
    tc.flush()
    wire.fail_with = errno.ECONNRESET
    tc.writev_async(netimpl.Request([b"b" * 1000], lambda r, st: done.append((1, st))))
    tc.writev_async(netimpl.Request([b"c" * 1000], lambda r, st: done.append((2, st))))
    tc.flush()
    if wire.zc:
        assert done == []  # the first one's record is still the kernel's
        wire.release(0)
    assert done == [(0, 0), (1, errno.ECONNRESET), (2, errno.ECONNRESET)]
    tc.writev_async(netimpl.Request([b"d"], lambda r, st: done.append((3, st))))
    tc.flush()
    assert done[-1] == (3, errno.ECONNRESET)


def test_close_cancels_records_not_handed_over_and_waits_for_zerocopy_ones(scripted):
    tc, wire, _peer = scripted
    done: list[tuple[int, int]] = []
    tc.writev_async(netimpl.Request([b"in the kernel"], lambda r, st: done.append((0, st))))
    tc.flush()
    wire.budget = 0
    tc.writev_async(netimpl.Request([b"encrypted, not sent"], lambda r, st: done.append((1, st))))
    tc.flush()
    assert len(wire._queued) == 1  # its record waits on the inner socket
    tc.close()
    if wire.zc:
        # Request 0's pages are the kernel's still: request 1, whose record is cancelled, waits behind it.
        assert done == []
        wire.release(0)
    assert done == [(0, 0), (1, errno.ECANCELED)]
    assert wire.closes == 1
