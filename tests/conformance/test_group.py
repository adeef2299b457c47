"""Conformance: SockGroup over sockets of every available backend."""

from __future__ import annotations

import errno
import math
import threading
import time

import pytest

import netimpl
from tests.conftest import open_fds
from tests.conformance.conftest import wait_for


def test_add_remove_and_membership_errors(net):
    client, server = net.pair()
    g1, g2 = net.group(), net.group()
    with pytest.raises(TypeError, match="callable"):
        g1.add_sock(server, None)  # type: ignore[arg-type]
    g1.add_sock(server, lambda g, s: None)
    assert server.group is g1 and g1.socks == [server]
    with pytest.raises(ValueError, match="another group"):
        g2.add_sock(server, lambda g, s: None)
    with pytest.raises(ValueError, match="already in this group"):
        g1.add_sock(server, lambda g, s: None)
    with pytest.raises(ValueError, match="not in this group"):
        g2.remove_sock(server)
    with pytest.raises(OSError) as info:
        g1.close()
    assert info.value.errno == errno.EBUSY
    g1.remove_sock(server)
    assert server.group is None and g1.socks == []
    g1.close()
    g1.close()  # idempotent once empty
    with pytest.raises(OSError):
        g1.add_sock(server, lambda g, s: None)
    closed = net.connect("127.0.0.1", net.listen().getaddr()[1])
    closed.close()
    with pytest.raises(OSError):
        g2.add_sock(closed, lambda g, s: None)


def test_ctx_and_stats(net):
    g = netimpl.SockGroup(ctx="mine")
    client, server = net.pair()
    g.add_sock(server, lambda g, s: s.recv_into(bytearray(8)))
    client.writev([b"x"])
    wait_for(lambda: g.stats.callbacks == 1, lambda: g.poll(timeout=0.01))
    assert g.ctx == "mine" and g.stats.impls == [net.impl] and g.stats.polls >= 1
    g.remove_sock(server)
    g.close()


def test_stats_count_every_poll_and_callback(net):
    g = net.group()
    client, server = net.pair()
    g.add_sock(server, lambda g, s: s.recv_into(bytearray(8)))
    before = g.stats.polls
    for _ in range(5):
        g.poll()
    assert g.stats.polls == before + 5 and g.stats.callbacks == 0
    assert g.stats == type(g.stats)([net.impl], before + 5, 0)
    assert repr(g.stats) == f"GroupStats(impls=[{net.impl!r}], polls={before + 5}, callbacks=0)"
    # Counters an application sets on a group of its own are counted into as they are.
    g.stats = netimpl.stats.GroupStats(impls=[net.impl], polls=100)
    client.writev([b"x"])
    wait_for(lambda: g.stats.callbacks == 1, lambda: g.poll(timeout=0.01))
    assert type(g.stats) is netimpl.stats.GroupStats and g.stats.polls > 100
    g.remove_sock(server)
    g.close()


def test_poll_argument_checks(net):
    g = net.group()
    for bad, exc in ((0, ValueError), (-1, ValueError), ("3", TypeError), (True, TypeError)):
        with pytest.raises(exc):
            g.poll(max_events=bad)  # type: ignore[arg-type]
    for bad, exc in ((-0.5, ValueError), ("1", TypeError), (float("nan"), TypeError)):
        with pytest.raises(exc):
            g.poll(timeout=bad)  # type: ignore[arg-type]
    # the signature's own errors, as Python gives them for a function of poll's signature
    with pytest.raises(TypeError, match="unexpected keyword argument 'max'"):
        g.poll(max=3)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="multiple values for argument 'max_events'"):
        g.poll(3, max_events=3)  # type: ignore[misc]
    with pytest.raises(TypeError, match="positional argument"):
        g.poll(3, 0.0, 1)  # type: ignore[call-arg]
    assert g.poll(8, 0.0) == g.poll(max_events=8, timeout=0) == type(g).poll(self=g, max_events=8) == 0


def test_read_callback_sees_data_then_eof(net):
    client, server = net.pair()
    g = net.group()
    seen = []

    def on_read(group, sock):
        assert group is g and sock is server
        n = sock.recv_into(buf)
        seen.append(bytes(buf[:n]) if n else n)

    buf = bytearray(64)
    g.add_sock(server, on_read)
    assert g.poll() == 0
    client.writev([b"hello"])
    wait_for(lambda: b"hello" in seen, lambda: g.poll(timeout=0.01))
    client.close()
    wait_for(lambda: 0 in seen, lambda: g.poll(timeout=0.01))


def test_callback_may_remove_or_close_its_socket(net):
    c1, s1 = net.pair()
    c2, s2 = net.pair()
    g = net.group()
    g.add_sock(s1, lambda grp, s: grp.remove_sock(s))
    g.add_sock(s2, lambda grp, s: s.close())
    c1.writev([b"a"])
    c2.writev([b"b"])
    wait_for(lambda: not g.socks, lambda: g.poll(timeout=0.01))
    assert s1.group is None and s1.fileno() >= 0 and s2.fileno() == -1
    assert g.poll() == 0


@pytest.mark.parametrize("recv_pipe", [True, False], ids=["pipe", "nopipe"])
def test_more_ready_sockets_than_max_events_are_all_served(impl, net, recv_pipe):
    old = netimpl.get_impl_opts(impl)
    netimpl.set_impl_opts(impl, enable_recv_pipe=recv_pipe)
    try:
        pairs = [net.pair() for _ in range(10)]
    finally:
        netimpl.set_impl_opts(impl, old)
    g = net.group()
    served: list[int] = []

    def on_read(group, sock):
        served.append(servers.index(sock))
        sock.recv_into(bytearray(10))  # one message of ten per callback

    servers = [s for _, s in pairs]
    for s in servers:
        g.add_sock(s, on_read)
    for c, _ in pairs:
        assert c.writev([b"0123456789" * 10]) == 100
    max_events = 3
    window = math.ceil(len(servers) / max_events)
    per_poll = []
    for _ in range(window):
        before = len(served)
        assert g.poll(max_events=max_events) <= max_events
        per_poll.append(served[before:])
    assert sorted(set(served)) == list(range(10)), f"not all served within {window} polls: {per_poll}"
    wait_for(lambda: len(served) == 100, lambda: g.poll(max_events=max_events))
    assert all(served.count(i) == 10 for i in range(10))
    # every socket is served again within `window` polls while it has data
    last: dict[int, int] = {}
    for k, i in enumerate(served):
        if i in last:
            assert k - last[i] <= window * max_events + max_events
        last[i] = k


def test_one_poll_serves_as_many_ready_sockets_as_max_events(net):
    # io_uring runs at most 20 items of deferred task work per enter (IO_LOCAL_TW_DEFAULT_MAX, 6.13
    # on): a poll must not stop at what one enter made ready.
    pairs = [net.pair() for _ in range(64)]
    g = net.group()
    served: set[int] = set()
    servers = [s for _, s in pairs]
    index = {s: i for i, s in enumerate(servers)}

    def on_read(group, sock):
        served.add(index[sock])
        sock.recv_into(bytearray(64))

    for s in servers:
        g.add_sock(s, on_read)
    assert g.poll(max_events=64) == 0  # every socket watched before its data comes
    for c, _ in pairs:
        assert c.writev([b"x" * 16]) == 16
    assert g.poll(max_events=64, timeout=5.0) == 64
    assert served == set(range(64))
    for c, _ in pairs:
        assert c.writev([b"y" * 16]) == 16
    assert g.poll(max_events=40, timeout=5.0) == 40, "max_events bounds the callbacks of one poll"
    assert g.poll(max_events=64, timeout=5.0) == 24


def test_poll_timeout_waits_without_spinning_and_wakes_on_data(net):
    client, server = net.pair()
    g = net.group()
    g.add_sock(server, lambda grp, s: s.recv_into(bytearray(16)))
    cpu0, wall0 = time.process_time(), time.monotonic()
    assert g.poll(timeout=0.3) == 0
    cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    assert wall >= 0.25, "poll returned before its timeout with nothing ready"
    assert cpu < wall / 3, f"poll spun: {cpu:.3f}s of CPU in {wall:.3f}s"
    threading.Timer(0.05, lambda: client.writev([b"wake"])).start()
    wall0 = time.monotonic()
    assert g.poll(timeout=10) == 1
    assert time.monotonic() - wall0 < 5


def test_empty_group_poll_timeout_sleeps(impl):
    g = netimpl.SockGroup()
    cpu0, wall0 = time.process_time(), time.monotonic()
    assert g.poll(timeout=0.1) == 0
    assert time.monotonic() - wall0 >= 0.09 and time.process_time() - cpu0 < 0.05
    g.close()


def test_exception_from_a_read_callback_propagates_and_the_rest_come_next_poll(net):
    pairs = [net.pair() for _ in range(3)]
    g = net.group()
    served = []

    def on_read(group, sock):
        served.append(sock)
        sock.recv_into(bytearray(10))
        if len(served) == 1:
            raise RuntimeError("first callback fails")

    for _, s in pairs:
        g.add_sock(s, on_read)
    for c, _ in pairs:
        c.writev([b"x"])
    with pytest.raises(RuntimeError, match="first callback fails"):
        g.poll()
    assert len(served) == 1
    wait_for(lambda: len(set(served)) == 3, g.poll)
    assert len(served) == 3  # nobody served twice


def test_exception_from_a_request_callback_propagates_out_of_poll(net):
    client, server = net.pair()
    g = net.group()
    g.add_sock(client, lambda grp, s: None)
    log = []

    def bad(req, status):
        raise KeyError("from a request callback")

    client.writev_async(netimpl.Request([b"a"], cb=bad))
    client.writev_async(netimpl.Request([b"b"], cb=lambda r, st: log.append(st)))
    with pytest.raises(KeyError):
        g.poll()
    assert log == [0]  # the next request still completed
    g.poll()


def test_300_connections_and_no_fd_leak(net):
    before = open_fds()
    lsock = netimpl.listen("127.0.0.1", 0, impl=net.impl)
    port = lsock.getaddr()[1]
    g = netimpl.SockGroup()
    got: dict[netimpl.Sock, bytes] = {}
    clients, servers = [], []

    def on_read(group, sock):
        buf = bytearray(16)
        n = sock.recv_into(buf)
        if n:
            got[sock] = bytes(buf[:n])

    for _ in range(300):
        clients.append(netimpl.connect("127.0.0.1", port, impl=net.impl))
        s = None
        while s is None:
            s = lsock.accept()
        servers.append(s)
        g.add_sock(s, on_read)
    for i, c in enumerate(clients):
        c.writev_async(netimpl.Request([b"%d" % i]))
        c.flush()
    wait_for(lambda: len(got) == 300, lambda: g.poll(max_events=64, timeout=0.01))
    assert sorted(int(v) for v in got.values()) == list(range(300))
    for s in servers:
        g.remove_sock(s)
        s.close()
    for c in clients:
        c.close()
    g.close()
    lsock.close()
    assert open_fds() == before


def test_group_serves_sockets_of_several_backends(impl, net):
    """Every available backend's sockets in one group with this one's."""
    others = [i.name for i in netimpl.impls() if i.available]
    g = net.group()
    got = []
    pairs = []
    for name in dict.fromkeys([impl] + others):
        lsock = netimpl.listen("127.0.0.1", 0, impl=name)
        c = netimpl.connect("127.0.0.1", lsock.getaddr()[1], impl=name)
        s = None
        while s is None:
            s = lsock.accept()
        net.socks += [lsock, c, s]
        pairs.append((c, s))
        g.add_sock(s, lambda grp, sock: got.append(sock.impl_name) if sock.recv_into(bytearray(8)) else None)
        g.add_sock(c, lambda grp, sock: None)
        c.writev_async(netimpl.Request([b"hi"]))
    wait_for(lambda: len(got) == len(pairs), lambda: g.poll(timeout=0.01))
    assert sorted(got) == sorted(dict.fromkeys([impl] + others))
    assert sorted(g.stats.impls) == sorted(dict.fromkeys([impl] + others))


def test_request_callback_closes_another_socket_with_completions_in_the_same_batch(net, caplog):
    """SPDK's uring module crashed here (#2406, #2112): a CQE dispatched to a socket closed meanwhile."""
    caplog.set_level("WARNING", logger="netimpl")
    (ca, sa), (cb_, sb) = net.pair(), net.pair()
    g = net.group()
    for s in (ca, cb_, sa, sb):
        g.add_sock(s, lambda grp, sock: sock.recv_into(bytearray(4096)))
    log: dict[str, list[int]] = {"a": [], "b": []}

    def a_done(req, status):
        log["a"].append(status)
        cb_.close()

    ca.writev_async(netimpl.Request([b"a" * 1000], cb=a_done))
    for _i in range(5):
        cb_.writev_async(netimpl.Request([b"b" * 1000], cb=lambda r, st: log["b"].append(st)))
    wait_for(lambda: log["a"] and len(log["b"]) == 5, lambda: g.poll(timeout=0.01))
    assert log["a"] == [0]
    assert len(log["b"]) == 5 and set(log["b"]) <= {0, errno.ECANCELED}  # each exactly once
    assert cb_.fileno() == -1 and cb_ not in g.socks
    for _ in range(5):
        g.poll()  # nothing stale is dispatched afterwards
    assert len(log["b"]) == 5
    assert not [r.getMessage() for r in caplog.records if r.name == "netimpl"]


def _two_ready(net, cb):
    """A group with two sockets, each with a byte waiting, both served by ``cb``: the group and the sockets."""
    (c1, s1), (c2, s2) = net.pair(), net.pair()
    g = net.group()
    g.add_sock(s1, cb)
    g.add_sock(s2, cb)
    c1.writev([b"x"])
    c2.writev([b"y"])
    return g, s1, s2


def test_read_callback_closes_another_ready_socket(net):
    served = []

    def on_read(grp, sock):
        served.append(sock)
        sock.recv_into(bytearray(16))
        (s2 if sock is s1 else s1).close()

    g, s1, s2 = _two_ready(net, on_read)
    wait_for(lambda: served, lambda: g.poll(timeout=0.01))
    for _ in range(5):
        g.poll()
    assert len(served) == 1  # the other was closed before its turn and never served


def test_read_callback_pauses_another_ready_socket_which_waits_for_its_resume(net):
    served = []

    def on_read(grp, sock):
        served.append(sock)
        sock.recv_into(bytearray(16))
        other = s2 if sock is s1 else s1
        if not other.closed and other.group is grp:
            grp.pause_reading(other)

    g, s1, s2 = _two_ready(net, on_read)
    wait_for(lambda: served, lambda: g.poll(timeout=0.01))
    for _ in range(5):
        g.poll(timeout=0.01)
    assert len(served) == 1  # the other was paused before its turn
    first = served[0]
    paused = s2 if first is s1 else s1
    g.resume_reading(paused)
    wait_for(lambda: len(served) == 2, lambda: g.poll(timeout=0.01))
    assert served[1] is paused


def test_a_socket_a_callback_removes_and_adds_back_is_served_by_its_new_callback(net):
    calls = []

    def old(grp, sock):
        calls.append(("old", sock))
        sock.recv_into(bytearray(16))
        other = s2 if sock is s1 else s1
        if ("new", other) not in calls and other.group is grp:
            grp.remove_sock(other)
            grp.add_sock(other, new)

    def new(grp, sock):
        calls.append(("new", sock))
        sock.recv_into(bytearray(16))

    g, s1, s2 = _two_ready(net, old)
    wait_for(lambda: len(calls) == 2, lambda: g.poll(timeout=0.01))
    (k1, first), (k2, second) = calls
    assert k1 == "old" and (k2, second) == ("new", s2 if first is s1 else s1)
    assert second._read_cb is new and first._read_cb is old
    g.remove_sock(second)
    assert second._read_cb is None


def test_listener_in_a_group_accepts_from_its_callback(net):
    """The README's pattern: a listening socket is readable when connections wait."""
    lsock = net.listen()
    g = net.group()
    accepted: list[netimpl.Sock] = []

    def on_listener(grp, listener):
        for s in iter(listener.accept, None):
            accepted.append(s)
            net.socks.append(s)

    g.add_sock(lsock, on_listener)
    assert g.poll() == 0
    clients = [net.connect("127.0.0.1", lsock.getaddr()[1]) for _ in range(3)]
    wait_for(lambda: len(accepted) == 3, lambda: g.poll(timeout=0.01))
    assert all(s.impl_name == net.impl for s in accepted) and len(clients) == 3
