"""The TLS layer over every backend: round trips, request life cycle, failures, flow control."""

from __future__ import annotations

import errno
import select
import socket
import ssl
import struct
import threading
import time

import pytest

import netimpl
from netimpl import tls
from tests.conformance.conftest import pattern, wait_for
from tests.conftest import need
from tests.tls.conftest import Reader, TlsNet, drive, wait_established


def test_round_trip_both_ways_through_a_group(tnet, certs, mixed):
    g = tnet.group(mixed)
    tc, ts, creader, sreader = tnet.tls_pair(certs, g)
    wait_established(g, tc, ts)
    assert tc.ssl_object.version() in ("TLSv1.2", "TLSv1.3")
    up, down = pattern(300_000, 1), pattern(200_000, 2)
    tc.writev_async(netimpl.Request([up]))
    ts.writev_async(netimpl.Request([down[:10], down[10:]]))
    drive(g, lambda: len(sreader.data) == len(up) and len(creader.data) == len(down))
    assert bytes(sreader.data) == up and bytes(creader.data) == down
    assert ts.stats.bytes_received == len(up) and tc.stats.bytes_sent == len(up)
    assert ts.stats.impl == "tls" and ts.impl_name == "tls" and ts.inner.impl_name == tnet.impl
    assert g.socks.count(tc) == 1 and tc.inner not in g.socks  # the inner sockets stay out of sight
    assert tc.getaddr() == tc.inner.getaddr() and tc.fileno() == tc.inner.fileno()
    assert "established" in repr(tc) and tnet.impl in repr(tc)


def test_many_requests_and_iovecs_complete_in_order(tnet, certs, mixed):
    g = tnet.group(mixed)
    tc, _ts, _, sreader = tnet.tls_pair(certs, g)
    done: list[tuple[int, int]] = []
    expect = bytearray()
    for i in range(300):
        bufs = [pattern(1 + (i * 37 + j * 11) % 700, i + j) for j in range(1 + i % 70)]
        if i % 50 == 7:
            bufs.append(memoryview(pattern(40_000, i)))  # larger than a record
        if i % 61 == 3:
            bufs = [b""]
        expect += b"".join(bufs)
        tc.writev_async(netimpl.Request(bufs, lambda r, st, i=i: done.append((i, st))))
    assert tc.queued_bytes == len(expect)  # queued during the handshake, sent once it is done
    drive(g, lambda: len(done) == 300 and len(sreader.data) == len(expect))
    assert done == [(i, 0) for i in range(300)]
    assert bytes(sreader.data) == expect
    assert tc.queued_bytes == 0 and tc.stats.requests_completed == 300


def test_readv_and_small_reads_keep_the_stream(tnet, certs):
    g = tnet.group()
    tc, ts, _, _ = tnet.tls_pair(certs, g, server_cb=lambda grp, s: None)
    wait_established(g, tc, ts)
    data = pattern(50_000, 3)
    tc.writev_async(netimpl.Request([data]))
    got = bytearray()

    def small_reads(grp, sock):
        a, b = bytearray(7), bytearray(100)
        n = sock.readv([a, b])
        if n:
            got.extend((a + b)[:n])

    g.remove_sock(ts)
    g.add_sock(ts, small_reads)
    # Decrypted bytes left in OpenSSL keep the socket on the pending-recv list: no new kernel event needed.
    drive(g, lambda: len(got) == len(data))
    assert bytes(got) == data


def test_recv_next_reads_the_plaintext_stream_in_order(tnet, certs, mixed):
    g = tnet.group(mixed)
    tc, ts, _, _ = tnet.tls_pair(certs, g, server_cb=lambda grp, s: None)
    wait_established(g, tc, ts)
    got = bytearray()
    ended = []

    def by_views(grp, sock):
        while (view := sock.recv_next()) is not None:
            if not view:
                ended.append(1)
                grp.remove_sock(sock)
                return
            assert view.readonly
            got.extend(view)

    g.remove_sock(ts)
    g.add_sock(ts, by_views)
    data = pattern(120_000, 4)
    tc.writev_async(netimpl.Request([data]))
    drive(g, lambda: len(got) == len(data))
    assert bytes(got) == data and ts.stats.bytes_received == len(data)
    tc.close()
    drive(g, lambda: ended)


def test_direct_writev_after_the_handshake(tnet, certs):
    g = tnet.group()
    tc, ts, _, sreader = tnet.tls_pair(certs, g)
    assert tc.writev([b"early"]) is None or tc.established  # nothing written before the handshake
    wait_established(g, tc, ts)
    n = tc.writev([b"abc", bytearray(b"def"), memoryview(pattern(70_000))])
    assert n == 70_006
    drive(g, lambda: len(sreader.data) == n)
    assert bytes(sreader.data) == b"abcdef" + pattern(70_000)


def test_standalone_sockets_handshake_through_their_own_calls(tnet, certs):
    client, server = tnet.pair()
    ts = tls.wrap(server, tls.server_context(certs.good), server_side=True)
    tc = tls.wrap(client, tls.client_context(certs.good), server_side=False, server_hostname="localhost")
    tnet.socks += [ts, tc]
    tc.writev_async(netimpl.Request([b"hello over tls"]))
    buf = bytearray(100)
    got = bytearray()

    def step():
        tc.flush()
        n = ts.recv_into(buf)
        if n:
            got.extend(buf[:n])
        tc.recv_into(bytearray(10))  # the client reads the server's flight

    from tests.conformance.conftest import wait_for
    wait_for(lambda: bytes(got) == b"hello over tls", step)
    assert ts.established and tc.established


def test_close_with_queued_requests_cancels_them_in_order(tnet, certs, mixed):
    g = tnet.group(mixed)
    tc, ts, _, _ = tnet.tls_pair(certs, g, client_cb=lambda grp, s: None)  # the client never reads
    wait_established(g, tc, ts)
    ts.set_sendbuf(16384)
    tc.inner.set_recvbuf(16384)
    done: list[tuple[int, int]] = []
    for i in range(40):
        ts.writev_async(netimpl.Request([bytes([i]) * (256 * 1024)], lambda r, st, i=i: done.append((i, st))))
    for _ in range(20):
        g.poll(timeout=0.002)
    assert ts.inner.stats.bytes_sent > 0
    assert len(done) < 40, "every request completed: the peer's buffers took 10 MiB"
    ts.close()
    assert len(done) == 40, "close returned before every request completed"
    assert [i for i, _ in done] == list(range(40))
    assert done[-1][1] == errno.ECANCELED
    first_cancel = next(k for k, (_, st) in enumerate(done) if st)
    assert all(st == 0 for _, st in done[:first_cancel]) and all(st == errno.ECANCELED for _, st in done[first_cancel:])
    assert ts.queued_bytes == 0 and ts.inner.closed and ts.fileno() == -1
    with pytest.raises(OSError) as e:
        ts.writev_async(netimpl.Request([b"x"]))
    assert e.value.errno == errno.EBADF


def test_remove_cancels_what_is_not_encrypted_and_keeps_the_session(tnet, certs):
    g = tnet.group()
    tc, ts, creader, _ = tnet.tls_pair(certs, g)
    wait_established(g, tc, ts)
    done: list[tuple[int, int]] = []
    ts.writev_async(netimpl.Request([b"first"], lambda r, st: done.append((0, st))))
    ts.flush()
    ts.writev_async(netimpl.Request([b"never"], lambda r, st: done.append((1, st))))
    g.remove_sock(ts)
    # Done now, or (a uring send cancelled by the removal) once "first"'s record is sent: in order.
    assert done in ([(0, 0), (1, errno.ECANCELED)], [])
    g.add_sock(ts, Reader())
    ts.writev_async(netimpl.Request([b"-second"], lambda r, st: done.append((2, st))))
    drive(g, lambda: bytes(creader.data) == b"first-second" and len(done) == 3)
    assert done == [(0, 0), (1, errno.ECANCELED), (2, 0)]


def test_remove_keeps_completion_order_behind_records_not_yet_sent(tnet, certs, mixed):
    g = tnet.group(mixed)
    reading = Reader()
    tc, ts, _, _ = tnet.tls_pair(certs, g, client_cb=lambda grp, s: reading(grp, s) if reading.calls >= 0 else None)
    wait_established(g, tc, ts)
    reading.calls = -1  # the client stops reading
    ts.set_sendbuf(16384)
    done: list[tuple[int, int]] = []
    chunks = [bytes([i]) * tls.BATCH for i in range(20)]
    for i, c in enumerate(chunks):
        ts.writev_async(netimpl.Request([c], lambda r, st, i=i: done.append((i, st))))
    for _ in range(10):
        g.poll(timeout=0.002)
    encrypted = len(ts._pending) + len(done)
    assert 0 < encrypted < 20
    g.remove_sock(ts)
    # The cancelled requests wait behind the records already made, which still go out.
    assert all(st == 0 for _, st in done)
    g.add_sock(ts, Reader())
    ts.set_sendbuf(1 << 20)  # (a tiny send buffer makes loopback TCP crawl)
    reading.calls = 0
    drive(g, lambda: len(done) == 20)
    assert [i for i, _ in done] == list(range(20))
    assert [st for _, st in done] == [0] * encrypted + [errno.ECANCELED] * (20 - encrypted)
    drive(g, lambda: len(reading.data) >= encrypted * tls.BATCH)
    assert bytes(reading.data) == b"".join(chunks[:encrypted])
    ts.writev_async(netimpl.Request([b"still one session"]))
    drive(g, lambda: bytes(reading.data).endswith(b"still one session"))


def _strict_pair(tnet, certs, g):
    """A pair whose server end reports an EOF without close_notify as an error."""
    client, server = tnet.pair()
    sreader, creader = Reader(), Reader()
    g.add_sock(server, sreader)
    g.add_sock(client, creader)
    ts = tls.wrap(server, tls.server_context(certs.good), server_side=True, suppress_ragged_eofs=False)
    tc = tls.wrap(client, tls.client_context(certs.good), server_side=False, server_hostname="localhost")
    tnet.socks += [ts, tc]
    return tc, ts, creader, sreader


@pytest.mark.parametrize("how", ["close", "fin"])
def test_close_sends_close_notify_and_a_bare_fin_is_an_error_when_asked(tnet, certs, how):
    g = tnet.group()
    tc, _ts, _creader, sreader = _strict_pair(tnet, certs, g)
    tc.writev_async(netimpl.Request([b"bye"]))
    drive(g, lambda: bytes(sreader.data) == b"bye")
    if how == "close":
        g.remove_sock(tc)
        tc.close()
    else:
        raw = socket.socket(fileno=tc.inner.fileno())
        raw.shutdown(socket.SHUT_WR)  # under the TLS layer: a FIN with no close_notify
        raw.detach()
    drive(g, lambda: sreader.eof or sreader.error is not None)
    if how == "close":
        assert sreader.eof and sreader.error is None  # a clean end: close_notify came before the FIN
    else:
        assert isinstance(sreader.error, ssl.SSLEOFError)


def test_peer_reset_fails_requests_and_is_raised_by_recv(tnet, certs, mixed):
    g = tnet.group(mixed)
    tc, ts, creader, _ = tnet.tls_pair(certs, g)
    wait_established(g, tc, ts)
    tc.writev_async(netimpl.Request([b"x"]))
    drive(g, lambda: True)
    # The server vanishes with a reset, under its TLS layer.
    g.remove_sock(ts)
    raw = socket.socket(fileno=ts.inner.fileno())
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    raw.detach()
    ts.close()
    drive(g, lambda: creader.error is not None or creader.eof)
    assert isinstance(creader.error, ConnectionResetError) or creader.eof
    statuses: list[int] = []
    for i in range(30):
        tc.writev_async(netimpl.Request([pattern(100_000, i)], lambda r, st: statuses.append(st)))
    drive(g, lambda: len(statuses) == 30)
    assert statuses[-1] in (errno.ECONNRESET, errno.EPIPE)
    assert all(st in (errno.ECONNRESET, errno.EPIPE) for st in statuses)
    assert not tc.is_connected()


def test_a_client_that_does_not_know_the_ca_is_refused(tnet, certs, tmp_path, mixed):
    g = tnet.group(mixed)
    wrong = tls.client_context(certs.client_only_ca(tmp_path, "other"))
    tc, ts, creader, sreader = tnet.tls_pair(certs, g, client_ctx=wrong)
    statuses: list[int] = []
    tc.writev_async(netimpl.Request([b"secret"], lambda r, st: statuses.append(st)))
    drive(g, lambda: creader.error is not None and sreader.error is not None)
    assert isinstance(creader.error, ssl.SSLCertVerificationError)
    assert "certificate verify failed" in str(creader.error)
    assert isinstance(sreader.error, ssl.SSLError) and "unknown ca" in str(sreader.error).lower()
    assert statuses == [errno.EPROTO]
    assert not tc.established and not ts.established and tc.tls_error is creader.error
    assert b"secret" not in sreader.data
    # Told once; from then on it reads as ended, and nothing spins.
    assert tc.recv_into(bytearray(10)) == 0


def test_a_server_with_a_certificate_for_another_ca_is_refused(tnet, certs, mixed):
    g = tnet.group(mixed)
    _tc, _ts, creader, _sreader = tnet.tls_pair(certs, g, server_ctx=tls.server_context(certs.other))
    drive(g, lambda: creader.error is not None)
    assert isinstance(creader.error, ssl.SSLCertVerificationError)


def test_a_client_without_a_certificate_is_refused_when_the_server_verifies_peers(tnet, certs, tmp_path):
    g = tnet.group()
    sctx = tls.server_context(certs.good, verify_peer=True)
    _tc, _ts, creader, sreader = tnet.tls_pair(certs, g, server_ctx=sctx,
                                             client_ctx=tls.client_context(certs.client_only_ca(tmp_path)))
    drive(g, lambda: sreader.error is not None)
    assert isinstance(sreader.error, ssl.SSLError)
    assert "certificate" in str(sreader.error).lower()
    drive(g, lambda: creader.error is not None or creader.eof)


def test_a_client_with_a_certificate_is_verified(tnet, certs):
    g = tnet.group()
    sctx = tls.server_context(certs.good, verify_peer=True)
    tc, ts, _creader, sreader = tnet.tls_pair(certs, g, server_ctx=sctx)
    tc.writev_async(netimpl.Request([b"trusted"]))
    drive(g, lambda: bytes(sreader.data) == b"trusted")
    peer = ts.ssl_object.getpeercert()
    assert dict(x[0] for x in peer["subject"])["commonName"] == "netimpl test client"


def test_a_plaintext_client_is_refused(tnet, certs, mixed):
    g = tnet.group(mixed)
    client, server = tnet.pair()
    sreader, creader = Reader(), Reader()
    g.add_sock(server, sreader)
    g.add_sock(client, creader)
    ts = tls.wrap(server, tls.server_context(certs.good), server_side=True)
    tnet.socks.append(ts)
    client.writev_async(netimpl.Request([b"NBDMAGIC\x00\x00\x00\x00\x00\x00\x00\x00hello plaintext\r\n\r\n"]))
    drive(g, lambda: sreader.error is not None)
    assert isinstance(sreader.error, ssl.SSLError)
    assert not ts.established
    g.remove_sock(ts)
    ts.close()
    drive(g, lambda: creader.eof or creader.error is not None)


def test_a_peer_that_closes_during_the_handshake_is_an_error_not_a_hang(tnet, certs):
    g = tnet.group()
    client, server = tnet.pair()
    sreader = Reader()
    g.add_sock(server, sreader)
    ts = tls.wrap(server, tls.server_context(certs.good), server_side=True)
    tnet.socks.append(ts)
    client.writev_async(netimpl.Request([b"\x16\x03\x01\x02\x00\x01"]))  # the start of a ClientHello
    client.flush()
    client.close()
    drive(g, lambda: sreader.error is not None or sreader.eof)
    assert isinstance(sreader.error, ssl.SSLError) or sreader.eof
    assert not ts.established
    # The connection is over: polling costs no read callbacks once the EOF has been read.
    calls = sreader.calls
    g.remove_sock(ts)
    g.add_sock(ts, sreader)
    for _ in range(20):
        g.poll(timeout=0.01)
    assert sreader.calls - calls <= 20


def test_a_peer_that_never_reads_holds_requests_not_ciphertext(tnet, certs, mixed):
    g = tnet.group(mixed)
    tc, ts, _, sreader = tnet.tls_pair(certs, g, client_cb=lambda grp, s: None)
    wait_established(g, tc, ts)
    ts.set_sendbuf(16384)
    tc.inner.set_recvbuf(16384)
    chunk = pattern(64 * 1024)
    for _ in range(256):  # 16 MiB for a peer that reads nothing
        ts.writev_async(netimpl.Request([chunk]))
    for _ in range(50):
        g.poll()
    assert ts.queued_bytes > 8 << 20  # counted as the plaintext requests
    assert ts.inner.queued_bytes <= tls.AHEAD_BYTES + tls.BATCH + 1024  # ciphertext made ahead is bounded
    # Backpressure: pause the producer's reads; its read callback is not called while paused.
    tc.writev_async(netimpl.Request([b"more work"]))
    g.pause_reading(ts)
    for _ in range(20):
        g.poll(timeout=0.005)
    assert sreader.data == b""
    g.resume_reading(ts)
    drive(g, lambda: bytes(sreader.data) == b"more work")


def test_pause_during_the_handshake_holds_the_data_not_the_handshake(tnet, certs):
    g = tnet.group()
    tc, ts, _, sreader = tnet.tls_pair(certs, g)
    g.pause_reading(ts)
    tc.writev_async(netimpl.Request([b"paused"]))
    drive(g, lambda: tc.established and ts.established)
    for _ in range(20):
        g.poll(timeout=0.005)
    assert sreader.data == b"" and sreader.calls == 0
    g.resume_reading(ts)
    drive(g, lambda: bytes(sreader.data) == b"paused")


def test_a_callback_may_close_its_socket_and_queue_more(tnet, certs):
    g = tnet.group()
    tc, ts, creader, _ = tnet.tls_pair(certs, g)
    wait_established(g, tc, ts)
    order: list[tuple[str, int]] = []

    def requeue(req, st):
        order.append(("a", st))
        ts.writev_async(netimpl.Request([b"-again"], lambda r, s: order.append(("b", s))))

    ts.writev_async(netimpl.Request([b"first"], requeue))
    drive(g, lambda: bytes(creader.data) == b"first-again" and len(order) == 2)
    assert order == [("a", 0), ("b", 0)]

    def closer(req, st):
        order.append(("c", st))
        ts.close()

    ts.writev_async(netimpl.Request([b"x"], closer))
    ts.writev_async(netimpl.Request([b"y"], lambda r, s: order.append(("d", s))))
    drive(g, lambda: len(order) == 4)
    assert order[2:] == [("c", 0), ("d", errno.ECANCELED)] or order[2:] == [("c", 0), ("d", 0)]
    assert ts.closed


def test_wrap_refuses_what_it_cannot_wrap(tnet, certs):
    client, server = tnet.pair()
    ctx = tls.server_context(certs.good)
    with pytest.raises(TypeError, match="ssl.SSLContext"):
        tls.wrap(server, "not a context", server_side=True)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Sock"):
        tls.wrap(object(), ctx, server_side=True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="listening"):
        tls.wrap(tnet.listen(), ctx, server_side=True)
    with pytest.raises(ValueError, match="group"):
        tls.wrap(server, ctx, server_side=True, cb=lambda g, s: None)
    with pytest.raises(ValueError, match="server_hostname|check_hostname"):
        tls.wrap(client, tls.client_context(certs.good), server_side=False)
    ts = tls.wrap(server, ctx, server_side=True)
    tnet.socks.append(ts)
    with pytest.raises(ValueError, match="already speaks TLS"):
        tls.wrap(ts, ctx, server_side=True)
    ts.close()
    with pytest.raises(ValueError, match="closed"):
        tls.wrap(ts.inner, ctx, server_side=True)
    with pytest.raises(OSError) as e:
        ts.recv_into(bytearray(10))
    assert e.value.errno == errno.EBADF


def test_tls_is_a_layer_not_a_registered_backend():
    assert "tls" not in [i.name for i in netimpl.impls()]
    with pytest.raises(netimpl.NetImplError, match="wrap"):
        tls.TlsImpl().listen("127.0.0.1", 0, netimpl.SockOpts())


def test_an_idle_group_of_tls_sockets_sleeps_in_poll(tnet, certs, mixed):
    g = tnet.group(mixed)
    tc, ts, _, _ = tnet.tls_pair(certs, g)
    wait_established(g, tc, ts)
    for _ in range(5):
        g.poll()  # the session tickets, their reads
    start, polls = time.monotonic(), 0
    while time.monotonic() - start < 0.3:
        g.poll(timeout=0.1)
        polls += 1
    assert polls <= 5, f"{polls} polls in 0.3 s with a 0.1 s timeout: something keeps waking the group"
    fd = g.fileno()  # and the group's fd says so too
    g.poll()
    assert not select.select([fd], [], [], 0)[0]


def test_more_ready_tls_sockets_than_max_events_are_all_served(tnet, certs):
    g = tnet.group()
    readers = []
    pairs = []
    for _ in range(6):
        r = Reader(size=50)  # small reads: decrypted bytes stay in OpenSSL, on the pending-recv list
        tc, ts, _, _ = tnet.tls_pair(certs, g, server_cb=r)
        readers.append(r)
        pairs.append((tc, ts))
    drive(g, lambda: all(tc.established and ts.established for tc, ts in pairs))
    for tc, _ in pairs:
        tc.writev_async(netimpl.Request([pattern(2000)]))
    wait_for(lambda: all(len(r.data) == 2000 for r in readers), lambda: g.poll(max_events=2, timeout=0.01))
    assert all(bytes(r.data) == pattern(2000) for r in readers)


def test_tls_sockets_over_different_backends_share_a_group(certs):
    names = [i.name for i in netimpl.impls() if i.available]
    need("" if len(names) > 1 else "needs two available backends")
    nets = [TlsNet(name) for name in names]
    g = netimpl.SockGroup()
    try:
        pairs = [n.tls_pair(certs, g) for n in nets]
        for k, (tc, _, _, _) in enumerate(pairs):
            tc.writev_async(netimpl.Request([pattern(100_000, k)]))
        drive(g, lambda: all(len(sr.data) == 100_000 for _, _, _, sr in pairs), poll_timeout=0.05)
        assert [bytes(sr.data) for _, _, _, sr in pairs] == [pattern(100_000, k) for k in range(len(pairs))]
        assert sorted({tc.inner.impl_name for tc, _, _, _ in pairs}) == sorted(names)
    finally:
        for s in g.socks:
            g.remove_sock(s)
        for n in nets:
            n.close()
        g.close()


@pytest.fixture
def uring_net():
    """A uring group belongs to the thread that polls it: the one backend with a thread rule."""
    info = next((i for i in netimpl.impls() if i.name == "uring"), None)
    need("" if info is not None and info.available else f"uring unavailable: {info.reason if info else 'absent'}")
    n = TlsNet("uring")
    yield n
    n.close()


def test_a_thread_that_does_not_poll_a_uring_group_is_refused_before_anything_changes(uring_net, certs):
    tnet = uring_net
    g = tnet.group()
    tc, ts, _, sreader = tnet.tls_pair(certs, g)
    wait_established(g, tc, ts)
    errors: list[BaseException] = []

    def meddle():
        for call in (lambda: tc.writev_async(netimpl.Request([b"from elsewhere"])), tc.flush):
            try:
                call()
            except OSError as exc:
                errors.append(exc)

    t = threading.Thread(target=meddle)
    t.start()
    t.join()
    assert [e.errno for e in errors] == [errno.EEXIST, errno.EEXIST]
    assert tc.queued_bytes == 0
    tc.writev_async(netimpl.Request([b"from the owner"]))
    drive(g, lambda: bytes(sreader.data) == b"from the owner")
