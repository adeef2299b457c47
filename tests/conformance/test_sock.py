"""Conformance: module-level calls and Sock, for every available backend."""

from __future__ import annotations

import errno
import fcntl
import os
import socket

import pytest

import netimpl
from tests.conformance.conftest import pattern, read_all, wait_for


def test_listen_connect_accept_and_addresses(net):
    lsock = net.listen()
    host, port, peer_host, peer_port = lsock.getaddr()
    assert (host, peer_host, peer_port) == ("127.0.0.1", "", 0) and port > 0
    assert lsock.impl_name == net.impl and lsock.accept() is None
    client = net.connect("127.0.0.1", port)
    server = net.accept(lsock)
    assert server.impl_name == net.impl
    c = client.getaddr()
    s = server.getaddr()
    assert c[2:] == (s[0], s[1]) and s[2:] == (c[0], c[1]) and c[3] == port
    assert client.is_ipv4() and not client.is_ipv6()
    assert server.recv_into(bytearray(10)) is None  # non-blocking, nothing yet


def test_ipv6_bracketed_and_plain(net):
    if not socket.has_ipv6:
        pytest.skip("no IPv6 in this kernel")
    lsock = net.listen("[::1]")
    assert lsock.getaddr()[0] == "::1" and lsock.is_ipv6()
    client = net.connect("::1", lsock.getaddr()[1])
    server = net.accept(lsock)
    assert client.is_ipv6() and server.is_ipv6() and not client.is_ipv4()
    assert client.writev([b"over v6"]) == 7
    assert read_all(server, 7) == b"over v6"


def test_host_name_resolves(net):
    lsock = net.listen("localhost")
    client = net.connect("localhost", lsock.getaddr()[1])
    assert net.accept(lsock).is_connected() and client.is_connected()


@pytest.mark.parametrize("host,port,exc,named", [
    ("not a host!", 1, ValueError, "not a host!"),
    ("999.1.1.1", 1, ValueError, "999.1.1.1"),
    ("[127.0.0.1]", 1, ValueError, "[127.0.0.1]"),
    ("127.0.0.1", 70000, ValueError, "70000"),
    ("127.0.0.1", -1, ValueError, "-1"),
    ("127.0.0.1", "80", TypeError, "'80'"),
    (None, 80, TypeError, "None"),
    ("127.0.0.1", True, TypeError, "True"),
])
def test_bad_host_or_port_names_the_value(impl, host, port, exc, named):
    for call in (netimpl.listen, netimpl.connect):
        with pytest.raises(exc) as info:
            call(host, port, impl=impl)
        assert named in str(info.value)


def test_bad_opts_type(impl):
    with pytest.raises(TypeError, match="SockOpts"):
        netimpl.listen("127.0.0.1", 0, impl=impl, opts={"priority": 1})  # type: ignore[arg-type]


def test_connection_refused_and_address_in_use(net):
    lsock = net.listen()
    port = lsock.getaddr()[1]
    with pytest.raises(OSError) as info:
        netimpl.listen("127.0.0.1", port, impl=net.impl)
    assert info.value.errno == errno.EADDRINUSE
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    free_port = probe.getsockname()[1]
    probe.close()
    with pytest.raises(ConnectionRefusedError):
        netimpl.connect("127.0.0.1", free_port, impl=net.impl)


def test_recv_into_readv_writev_and_eof(net):
    client, server = net.pair()
    assert client.writev([b"abc", bytearray(b"def"), memoryview(b"ghi")]) == 9
    a, b = bytearray(4), bytearray(10)
    got = None
    while got is None:
        got = server.readv([a, b])
    assert got == 9 and bytes(a) == b"abcd" and bytes(b[:5]) == b"efghi"
    assert server.recv_into(bytearray(4)) is None
    client.close()
    wait_for(lambda: server.recv_into(bytearray(4)) == 0)


def test_large_reads_bypass_the_pipe_and_small_ones_use_it(net):
    client, server = net.pair()
    payload = pattern(300_000)
    sent = 0
    data = bytearray()
    big = bytearray(4 << 20)  # at least MIN_SOCK_PIPE_SIZE: straight into this buffer
    while len(data) < len(payload):
        if sent < len(payload):
            sent += client.writev([memoryview(payload)[sent:]]) or 0
        n = server.recv_into(big)
        if n:
            data += big[:n]
    assert bytes(data) == payload
    syscalls = server.stats.syscalls
    client.writev([b"s" * 40])
    small = bytearray(4)
    got = bytearray()
    while len(got) < 40:
        n = server.recv_into(small)
        if n:
            got += small[:n]
    assert bytes(got) == b"s" * 40
    # ten small reads, but the pipe took all 40 bytes from the kernel at once
    assert server.stats.syscalls - syscalls < 10


def test_use_after_close_raises_ebadf_and_fileno_is_minus_one(net):
    client, server = net.pair()
    assert client.fileno() >= 0
    client.close()
    client.close()
    assert client.fileno() == -1
    for call in (lambda: client.recv_into(bytearray(1)), lambda: client.writev([b"x"]),
                 lambda: client.writev_async(netimpl.Request([b"x"])), client.flush, client.getaddr,
                 client.is_connected, lambda: client.set_sendbuf(65536), client.accept):
        with pytest.raises(OSError) as info:
            call()
        assert info.value.errno == errno.EBADF


def test_context_manager_closes(net):
    lsock = net.listen()
    with netimpl.connect("127.0.0.1", lsock.getaddr()[1], impl=net.impl) as s:
        assert s.fileno() >= 0
    assert s.fileno() == -1


def test_is_connected_follows_the_peer(net):
    client, server = net.pair()
    assert client.is_connected() and server.is_connected()
    server.close()
    wait_for(lambda: not client.is_connected())


def test_accepted_socket_inherits_priority_and_is_non_blocking(net):
    lsock = net.listen(opts=netimpl.SockOpts(priority=3))
    client = net.connect("127.0.0.1", lsock.getaddr()[1])
    server = net.accept(lsock)
    probe = socket.socket(fileno=socket.dup(server.fileno()))
    try:
        assert probe.getsockopt(socket.SOL_SOCKET, socket.SO_PRIORITY) == 3
        assert fcntl.fcntl(server.fileno(), fcntl.F_GETFL) & os.O_NONBLOCK
    finally:
        probe.close()
    assert client.zerocopy is False and server.zerocopy is False  # loopback


def test_set_recvbuf_resizes_the_pipe_keeping_unread_bytes(net):
    client, server = net.pair()
    client.writev([b"0123456789" * 10])
    first = bytearray(10)
    while server.recv_into(first) is None:
        pass
    assert bytes(first) == b"0123456789" and server._has_buffered()
    with pytest.raises(ValueError, match="90 bytes are buffered"):
        server.set_recvbuf(50)
    server.set_recvbuf(95)
    server.set_recvbuf(1 << 16)
    assert read_all(server, 90) == b"0123456789" * 9
    with pytest.raises(ValueError, match="0"):
        server.set_recvbuf(0)
    with pytest.raises(TypeError):
        server.set_recvbuf("big")  # type: ignore[arg-type]


def test_set_recvlowat_and_sendbuf(net):
    client, server = net.pair()
    server.set_recvlowat(4)
    client.set_sendbuf(1 << 16)
    probe = socket.socket(fileno=socket.dup(server.fileno()))
    try:
        assert probe.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT) == 4
    finally:
        probe.close()
    with pytest.raises(ValueError, match="-5"):
        server.set_recvlowat(-5)


def test_placement_id(impl, net):
    client, server = net.pair()
    assert server.placement_id == -1  # disabled by default
    old = netimpl.get_impl_opts(impl)
    netimpl.set_impl_opts(impl, enable_placement_id=2)
    try:
        client2, server2 = net.pair()
        client2.writev([b"x"])
        read_all(server2, 1)
        assert server2.placement_id in range(64)  # the CPU that took the packet
        group = net.group()
        group.add_sock(server2, lambda g, s: None)
        assert netimpl.optimal_group(server2) is group
        assert netimpl.optimal_group(server) is None
        group.remove_sock(server2)
        assert netimpl.optimal_group(server2) is None
    finally:
        netimpl.set_impl_opts(impl, old)


def test_stats_count_bytes_and_name_the_backend(net):
    client, server = net.pair()
    client.writev_async(netimpl.Request([b"x" * 100]))
    client.flush()
    read_all(server, 100)
    assert client.stats.impl == net.impl
    assert client.stats.bytes_sent == 100 and client.stats.requests_completed == 1
    assert server.stats.bytes_received == 100 and server.stats.syscalls >= 1
    assert net.impl in repr(client) and "queued=0" in repr(client)



def test_bytes_received_counts_every_byte_once_across_a_group_and_out_of_it(net, mixed):
    g = net.group(mixed)
    client, server = net.pair()
    first = bytearray()
    reading = [True]

    def read_some(grp, sock):
        if reading[0]:
            buf = bytearray(700)
            n = sock.recv_into(buf)
            if n:
                first.extend(buf[:n])

    g.add_sock(server, read_some)
    data = pattern(20_000, 8)
    client.writev([data[:10_000]])
    wait_for(lambda: first, lambda: g.poll(timeout=0.01))  # one small read: the rest is held or in the kernel
    reading[0] = False
    client.writev([data[10_000:]])
    for _ in range(10):
        g.poll(timeout=0.01)  # a backend that receives on its own (uring) takes it in meanwhile
    g.remove_sock(server)  # whatever the backend held for it stays the socket's
    rest = read_all(server, len(data) - len(first))
    assert bytes(first) + rest == data
    assert server.stats.bytes_received == len(data)
