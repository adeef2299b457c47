"""Conformance: Unix-domain stream sockets (``netimpl.listen_unix`` / ``connect_unix``), every backend."""

from __future__ import annotations

import errno
import os
import socket

import pytest

import netimpl
from tests.conformance.conftest import pattern, read_all, wait_for


@pytest.fixture
def path(tmp_path):
    return str(tmp_path / "nbd.sock")


def unix_pair(net, path):
    lsock = netimpl.listen_unix(path, impl=net.impl)
    client = netimpl.connect_unix(path, impl=net.impl)
    net.socks += [lsock, client]
    return lsock, client, net.accept(lsock)


def test_unix_sockets_round_trip_through_a_group_with_queued_requests(net, path, mixed):
    lsock, client, server = unix_pair(net, path)
    assert lsock.getaddr() == (path, 0, "", 0) and server.getaddr()[0] == path and client.getaddr()[2] == path
    assert not any((server.zerocopy, server.is_ipv4(), server.is_ipv6())) and server.placement_id == -1
    assert server.is_connected() and server.impl_name == net.impl
    g = net.group(mixed)
    got = bytearray()

    def on_read(grp, sock):
        buf = bytearray(65536)
        n = sock.recv_into(buf)
        if n:
            got.extend(buf[:n])

    g.add_sock(server, on_read)
    data = pattern(1 << 20)
    pieces = [data[i:i + 4096] for i in range(0, len(data), 4096)]
    done = []
    for i in range(0, len(pieces), 50):   # many requests, many iovecs (past the 64-iovec batch)
        client.writev_async(netimpl.Request(pieces[i:i + 50], lambda r, st: done.append(st)))
    g.add_sock(client, lambda grp, s: None)
    wait_for(lambda: len(got) == len(data), lambda: g.poll(timeout=0.01))
    assert bytes(got) == data and done == [0] * len(done) and client.queued_bytes == 0
    server.writev_async(netimpl.Request([b"back"]))
    server.flush()
    g.remove_sock(client)
    assert read_all(client, 4) == b"back"
    client.close()
    wait_for(lambda: not server.is_connected(), lambda: g.poll(timeout=0.01))


def test_a_listener_removes_its_path_and_replaces_only_a_stale_one(net, path):
    lsock = netimpl.listen_unix(path, impl=net.impl)
    with pytest.raises(OSError) as info:
        netimpl.listen_unix(path, impl=net.impl)  # someone listens there
    assert info.value.errno == errno.EADDRINUSE
    lsock.close()
    assert not os.path.exists(path)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()                                  # a server that died: its file stays
    assert os.path.exists(path)
    lsock = netimpl.listen_unix(path, impl=net.impl)
    c = netimpl.connect_unix(path, impl=net.impl)
    net.socks += [lsock, c]
    assert net.accept(lsock) is not None
    lsock.close()
    assert not os.path.exists(path)
    with open(path, "w") as f:                     # not a socket: never removed
        f.write("data")
    with pytest.raises(FileExistsError):
        netimpl.listen_unix(path, impl=net.impl)
    assert open(path).read() == "data"


def test_abstract_namespace_and_bad_paths(net, path):
    name = f"\0netimpl-test-{os.getpid()}-{net.impl}"
    lsock = netimpl.listen_unix(name, impl=net.impl)
    c = netimpl.connect_unix(name.encode(), impl=net.impl)
    net.socks += [lsock, c]
    assert net.accept(lsock).getaddr()[0] == name
    with pytest.raises(ValueError, match="over the kernel's 107"):
        netimpl.listen_unix("/tmp/" + "x" * 120, impl=net.impl)
    with pytest.raises(ValueError, match="empty"):
        netimpl.connect_unix("", impl=net.impl)
    with pytest.raises(TypeError, match="path"):
        netimpl.listen_unix(42, impl=net.impl)  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError):
        netimpl.connect_unix(path, impl=net.impl)
