"""Conformance: asynchronous writes on real sockets, for every available backend."""

from __future__ import annotations

import errno
import socket
import struct

import netimpl
from tests.conformance.conftest import pattern, read_all, wait_for


def test_many_requests_many_iovecs_partial_writes_arrive_intact_and_in_order(net):
    client, server = net.pair()
    client.set_sendbuf(64 * 1024)
    group = net.group()
    group.add_sock(client, lambda g, s: None)
    order = []
    expected = bytearray()
    for i in range(200):
        bufs = [pattern(1 + (i * 37 + j * 11) % 3000, i + j) for j in range(1 + i % 9)]
        expected += b"".join(bufs)
        client.writev_async(netimpl.Request(bufs, cb=lambda r, st, i=i: order.append((i, st))))
    got = bytearray()
    buf = bytearray(1 << 16)
    while len(got) < len(expected):
        group.poll(timeout=0.01)
        n = server.recv_into(buf)  # a reader slower than the writer: partial sends happen
        if n:
            got += buf[:n]
    wait_for(lambda: len(order) == 200, group.poll)
    assert bytes(got) == bytes(expected)
    assert order == [(i, 0) for i in range(200)]
    assert client.stats.requests_completed == 200


def test_close_with_queued_requests_cancels_them_before_returning(net):
    client, server = net.pair()
    client.set_sendbuf(4096)
    log = []
    for i in range(50):
        client.writev_async(netimpl.Request([bytes(64 * 1024)], cb=lambda r, st, i=i: log.append((i, st))))
    client.flush()  # the kernel takes some of it
    sent = [i for i, st in log if st == 0]
    client.close()
    assert len(log) == 50  # every request completed before close returned
    assert [i for i, _ in log] == list(range(50))
    assert all(st == errno.ECANCELED for i, st in log if i not in sent)
    assert any(st == errno.ECANCELED for _, st in log)


def test_remove_sock_cancels_queued_requests_and_the_socket_lives_on(net):
    client, server = net.pair()
    client.set_sendbuf(4096)
    group = net.group()
    group.add_sock(client, lambda g, s: None)
    log = []
    for _i in range(40):
        client.writev_async(netimpl.Request([bytes(64 * 1024)], cb=lambda r, st: log.append(st)))
    group.poll()
    group.remove_sock(client)
    assert len(log) == 40 and errno.ECANCELED in log
    assert client.group is None and client not in group.socks
    assert client.is_connected()
    sent = client.stats.bytes_sent
    read_all(server, sent)  # drain what the kernel took before the remove
    assert client.writev([b"still open"]) == 10
    assert read_all(server, 10) == b"still open"


def test_callback_requeues_and_closes_its_own_socket(net):
    client, server = net.pair()
    group = net.group()
    group.add_sock(client, lambda g, s: None)
    log = []
    second = netimpl.Request([b"second"], cb=lambda r, st: (log.append(("second", st)), client.close()))
    third = netimpl.Request([b"third"], cb=lambda r, st: log.append(("third", st)))

    def first_cb(req, status):
        log.append(("first", status))
        client.writev_async(second)  # re-queue from a callback
        client.writev_async(third)

    client.writev_async(netimpl.Request([b"first"], cb=first_cb))
    wait_for(lambda: len(log) == 3, lambda: group.poll(timeout=0.01))
    assert log[0] == ("first", 0) and log[1] == ("second", 0)
    # "third" was queued with "second": sent with it (0), or cancelled by the close
    assert log[2][0] == "third" and log[2][1] in (0, errno.ECANCELED)
    assert client.fileno() == -1 and client not in group.socks
    assert read_all(server, 11 if log[2][1] else 16)[:11] == b"firstsecond"


def test_request_reused_after_its_callback(net):
    client, server = net.pair()
    count = []
    req = netimpl.Request([b"ping"], cb=lambda r, st: count.append(st))
    for _ in range(5):
        client.writev_async(req)
        client.flush()
        wait_for(lambda: not req.in_flight, client.flush)
    assert count == [0] * 5 and read_all(server, 20) == b"ping" * 5


def _reset(sock: netimpl.Sock) -> None:
    """Close ``sock`` abortively: the peer sees RST."""
    probe = socket.socket(fileno=socket.dup(sock.fileno()))
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    probe.close()
    sock.close()


def test_peer_reset_while_requests_are_queued(net):
    client, server = net.pair()
    client.set_sendbuf(8192)
    group = net.group()
    events = []
    group.add_sock(client, lambda g, s: events.append("readable"))
    log = []
    for _i in range(100):
        client.writev_async(netimpl.Request([bytes(32 * 1024)], cb=lambda r, st: log.append(st)))
    group.poll()
    assert len(log) < 100  # the peer does not read: most are still queued
    _reset(server)
    wait_for(lambda: len(log) == 100, lambda: group.poll(timeout=0.01))
    failed = [st for st in log if st]
    assert failed and set(failed) <= {errno.ECONNRESET, errno.EPIPE}
    assert log == sorted(log, key=lambda st: st != 0)  # completed in order: successes first
    assert "readable" in events  # the error is delivered to the read callback too
    try:
        assert client.recv_into(bytearray(10)) == 0
    except ConnectionResetError:
        pass


def test_writev_async_to_a_reset_socket_completes_with_the_error(net):
    client, server = net.pair()
    _reset(server)
    wait_for(lambda: not client.is_connected())
    log = []
    client.writev_async(netimpl.Request([b"late"], cb=lambda r, st: log.append(st)))
    client.flush()
    if not log:  # the first write after a reset may still be accepted
        client.writev_async(netimpl.Request([b"later"], cb=lambda r, st: log.append(st)))
        client.flush()
    assert log and log[-1] in (errno.ECONNRESET, errno.EPIPE)
