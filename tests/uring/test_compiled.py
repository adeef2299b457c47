"""The uring group's compiled hot path (bridge.c): in use on the compiled core, Python only for callbacks.

The conformance suite checks what the group does on both paths (it runs
once on the compiled core and once under ``NETIMPL_NATIVE=0``); these check
what only the compiled path promises: that it is the one running, that a
poll runs no Python but the application's callbacks, and that a send in
flight keeps its buffers alive until its completion.
"""

from __future__ import annotations

import gc
import os
import socket
import sys
import weakref

import pytest

import netimpl
from netimpl import accel
from netimpl.uring import group as ugroup
from netimpl.uring import sock as usock
from netimpl.uring.ring import _bridge
from tests.conftest import need
from tests.uring.test_multishot import gi_of, pair, poll_until, reader


@pytest.fixture
def compiled():
    if os.environ.get(accel.ENV_VAR, "1") == "0":
        pytest.skip("the Python twin runs (NETIMPL_NATIVE=0): the reference methods serve, checked by the suite")
    need(accel.reason and f"the compiled core is not in use: {accel.reason}")


def test_the_compiled_hot_path_serves_uring_groups_on_the_compiled_core():
    impl = ugroup.UringGroupImpl
    if os.environ.get(accel.ENV_VAR, "1") == "0":
        assert not ugroup._compiled
        assert impl.poll is impl._poll_py and impl.flush_sock is impl._flush_sock_py
        assert usock.UringSock.recv_into is usock.UringSock._recv_into_py
        return
    need(accel.reason and f"the compiled core is not in use: {accel.reason}")
    assert ugroup._compiled
    for name, fn in [("poll", _bridge.poll), ("flush_dirty", _bridge.flush_dirty),
                     ("_prep_dirty", _bridge.prep_dirty), ("flush_sock", _bridge.flush_sock)]:
        assert impl.__dict__[name].__func__ is fn, name
    assert usock.UringSock.__dict__["recv_into"].__func__ is _bridge.sock_recv_into
    assert usock.UringSock.__dict__["_has_buffered"].__func__ is _bridge.sock_has_buffered


def test_the_group_calls_the_compiled_poll_and_flush_in_c_and_an_override_in_python(request, compiled, monkeypatch):
    """The group's poll calls the compiled poll and flush_dirty straight in C (set_group_calls), as
    long as they are the class's methods; a class that overrides them gets its own called."""
    seen: list[str] = []

    def poll(self, max_events, timeout):
        seen.append("poll")
        return _bridge.poll(self, max_events, timeout)

    def flush_dirty(self):
        seen.append("flush_dirty")
        _bridge.flush_dirty(self)

    group = netimpl.SockGroup()
    request.addfinalizer(group.close)
    got = bytearray()
    read = reader(got, 64)

    def on_read(g, s):  # an echo: its replies make the group flush
        before = len(got)
        read(g, s)
        if len(got) > before:
            s.writev_async(netimpl.Request([bytes(got[before:])], lambda r, st: None))

    server, client = pair(request, group, on_read)
    client.writev([b"a" * 8])
    poll_until(group, lambda: len(got) == 8)
    assert seen == []  # the compiled methods: nothing of this test's Python ran
    monkeypatch.setattr(ugroup.UringGroupImpl, "poll", poll)
    monkeypatch.setattr(ugroup.UringGroupImpl, "flush_dirty", flush_dirty)
    client.writev([b"b" * 8])
    poll_until(group, lambda: len(got) == 16)
    assert "poll" in seen and "flush_dirty" in seen
    assert bytes(got) == b"a" * 8 + b"b" * 8
    reply = bytearray()
    while len(reply) < 16:
        n = client.recv_into(chunk := bytearray(64))
        if n:
            reply += chunk[:n]
    assert bytes(reply) == b"a" * 8 + b"b" * 8


def test_a_poll_runs_python_only_for_the_callbacks(request, compiled):
    """An echo at queue depth 1: per request, the read callback and the request's callback."""
    group = netimpl.SockGroup()
    request.addfinalizer(group.close)
    buf = bytearray(4096)

    def done(req, status):
        assert status == 0

    def on_read(g, sock):
        n = sock.recv_into(buf)
        if n:
            sock.writev_async(netimpl.Request([bytes(buf[:n])], done))

    server, client = pair(request, group, on_read)
    for _ in range(20):  # warm up: the ring, the first send's struct (made in Python, once)
        client.writev([b"x" * 64])
        poll_until(group, lambda: client.recv_into(bytearray(64)))

    calls: dict[str, int] = {}

    def prof(frame, event, arg):
        if event == "call":
            name = frame.f_code.co_name
            calls[name] = calls.get(name, 0) + 1

    rounds = 200
    reply = bytearray(64)
    got = 0
    for _ in range(rounds):
        client.writev([b"y" * 64])
        while True:
            sys.setprofile(prof)
            try:
                group.poll(timeout=1.0)
            finally:
                sys.setprofile(None)
            n = client.recv_into(reply)
            if n:
                got += n
                break
    assert got == rounds * 64
    app = calls.pop("on_read", 0) + calls.pop("done", 0)
    assert app >= 2 * rounds
    # Nothing of netimpl's Python runs per request (a rare slow path may run a handful of times).
    assert sum(calls.values()) <= rounds // 10, calls


def test_a_send_in_flight_holds_its_buffers_until_its_completion(request, compiled):
    group = netimpl.SockGroup()
    request.addfinalizer(group.close)
    server, client = pair(request, group, lambda g, s: None)
    group.poll(timeout=0)
    done: list[int] = []
    warm = netimpl.Request([b"warm"], lambda r, st: done.append(st))
    server.writev_async(warm)
    gi_of(group).flush_sock(server, True, False)
    poll_until(group, lambda: done)  # the first SEND (Python makes its struct) is behind us

    class Buf(bytearray):
        pass

    body = Buf(b"z" * 1000)
    ref = weakref.ref(body)
    server.writev_async(netimpl.Request([body], lambda r, st: done.append(st)))
    # As a SEND (what a flush of many sockets makes), submitted now; its completion comes with the next poll.
    gi_of(group).flush_sock(server, True, False)
    assert server._send_ud and server._send_iovs == (body,)
    del body
    gc.collect()
    assert ref() is not None  # the kernel may still read it
    poll_until(group, lambda: len(done) == 2)
    assert done == [0, 0] and server._send_ud == 0 and server._send_iovs is None
    gc.collect()
    assert ref() is None
    got = bytearray()
    while len(got) < 1004:
        n = client.recv_into(chunk := bytearray(2048))
        if n:
            got += chunk[:n]
    assert bytes(got) == b"warm" + b"z" * 1000


def test_a_short_send_takes_the_reference_path_and_loses_nothing(request, compiled):
    """Replies larger than the sockets take at once, on two sockets (so a poll's flush makes SENDs, not
    sendmsg(2) calls): the C hands the short completions to Python."""
    group = netimpl.SockGroup()
    request.addfinalizer(group.close)
    pairs = [pair(request, group, lambda g, s: None) for _ in range(2)]
    gi = gi_of(group)
    done: list[int] = []
    for server, client in pairs:
        server._s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        server.writev_async(netimpl.Request([b"warm"], lambda r, st: done.append(st)))
        gi.flush_sock(server, True, False)  # as a SEND: Python makes the ring and the first send's struct, once
    poll_until(group, lambda: len(done) == 2)
    for _, client in pairs:
        assert client.recv_into(bytearray(4)) == 4
    done.clear()
    short: list[tuple[int, int]] = []
    on_send = gi._on_send

    def spy(ud, sock, zc, res, flags):
        short.append((res, sock._send_total))
        on_send(ud, sock, zc, res, flags)

    gi._on_send = spy  # the Python method the C hands these completions to
    data = bytes(range(256)) * 4096  # 1 MiB
    for server, _ in pairs:
        server.writev_async(netimpl.Request([data[: len(data) // 2], data[len(data) // 2:]],
                                            lambda r, st: done.append(st)))
    got = [bytearray(), bytearray()]
    buf = bytearray(65536)
    while len(done) < 2 or any(len(g) < len(data) for g in got):
        group.poll(timeout=0.01)
        for (_, client), g in zip(pairs, got):
            n = client.recv_into(buf)
            if n:
                g += buf[:n]
    assert done == [0, 0] and all(bytes(g) == data for g in got)
    assert short and all(0 <= res < total for res, total in short), short[-3:]  # only the short ones reached Python
    for server, _ in pairs:
        assert server.stats.bytes_sent == 4 + len(data)
        assert server._send_ud == 0
    # no send's entry is left but each socket's own, which its next write task uses
    assert {ud for ud, op in gi._ops.items() if op[0] == ugroup.SEND} == {s._write_ud for s in gi.socks}


def _echo_group(request):
    """A group serving one uring socket whose read callback appends to ``got``, after one read served."""
    group = netimpl.SockGroup()
    request.addfinalizer(group.close)
    got = bytearray()
    buf = bytearray(4096)

    def on_read(g, s):
        n = s.recv_into(buf)
        got.extend(buf[:n or 0])

    _, client = pair(request, group, on_read)
    client.writev([b"a"])
    poll_until(group, lambda: got == b"a")
    return group, client, got


def test_the_group_state_the_compiled_poll_reads_is_a_c_base(request, compiled):
    """UringGroupImpl's hot state is bridge.c's GroupState, read as fields, seen as attributes."""
    assert ugroup.UringGroupImpl.__mro__[1] is _bridge.GroupState
    assert issubclass(_bridge.GroupState, accel.native.GroupImplCore)
    group, _, _ = _echo_group(request)
    gi = gi_of(group)
    assert gi._efd == -1 and gi._next_ud > 1 and gi._owner and gi._ring is not None
    assert isinstance(gi._backlog, ugroup.deque) and gi._carry == [] and gi._removing == set()


def test_a_compiled_poll_that_finds_its_state_missing_raises_naming_it(request, compiled):
    group, client, got = _echo_group(request)
    gi = gi_of(group)
    backlog = gi._backlog
    del gi._backlog
    try:
        with pytest.raises(AttributeError, match="_backlog"):
            group.poll(timeout=0)
    finally:
        gi._backlog = backlog
    client.writev([b"b"])
    poll_until(group, lambda: got == b"ab")


def test_the_compiled_entry_points_refuse_what_is_not_a_uring_group_impl(request, compiled):
    group = netimpl.SockGroup()
    request.addfinalizer(group.close)
    posix_gi = netimpl.registry.get("posix").group_impl_create()
    request.addfinalizer(posix_gi.close)
    for call, args in [(_bridge.poll, (posix_gi, 1, 0.0)), (_bridge.flush_dirty, (posix_gi,)),
                       (_bridge.prep_dirty, (object(),)), (_bridge.flush_sock, (None, None, False))]:
        with pytest.raises(TypeError, match="takes a uring group impl"):
            call(*args)
