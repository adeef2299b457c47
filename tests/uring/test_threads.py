"""A uring group's ring belongs to the thread that polls it (IORING_SETUP_SINGLE_ISSUER)."""

from __future__ import annotations

import errno
import queue
import threading

import pytest

import netimpl


class Poller(threading.Thread):
    """A thread that owns a group and runs what it is handed, as a server's loop does."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.jobs: queue.Queue = queue.Queue()
        self.results: queue.Queue = queue.Queue()
        self.start()

    def run(self) -> None:
        while (job := self.jobs.get()) is not None:
            try:
                self.results.put(("ok", job()))
            except BaseException as exc:  # handed back to the test
                self.results.put(("raised", exc))

    def call(self, fn):
        self.jobs.put(fn)
        kind, value = self.results.get(timeout=10)
        if kind == "raised":
            raise value
        return value


def test_close_from_another_thread_with_operations_in_flight_is_refused_cleanly():
    lsock = netimpl.listen("127.0.0.1", 0, impl="uring")
    client = netimpl.connect("127.0.0.1", lsock.getaddr()[1], impl="uring")
    server = None
    while server is None:
        server = lsock.accept()
    poller = Poller()
    group = poller.call(netimpl.SockGroup)
    poller.call(lambda: group.add_sock(server, lambda g, s: None))
    poller.call(group.poll)  # creates the ring on the poller and arms a poll for the socket
    with pytest.raises(OSError) as info:
        server.close()  # from the main thread
    assert info.value.errno == errno.EEXIST and "thread that polls" in str(info.value)
    assert not server.closed and server.group is group  # refused before anything changed
    poller.call(server.close)
    poller.call(group.close)
    assert server.closed and server.fileno() == -1
    poller.jobs.put(None)
    poller.join(5)
    client.close()
    lsock.close()


class Served:
    """A connected uring pair in a group owned by a poller thread that has polled once (the ring exists)."""

    def __init__(self) -> None:
        self.lsock = netimpl.listen("127.0.0.1", 0, impl="uring")
        self.client = netimpl.connect("127.0.0.1", self.lsock.getaddr()[1], impl="uring")
        server = None
        while server is None:
            server = self.lsock.accept()
        self.server = server
        self.poller = Poller()
        self.group = self.poller.call(netimpl.SockGroup)
        self.got = bytearray()
        self.poller.call(lambda: self.group.add_sock(server, self._on_read))
        self.poller.call(lambda: self.group.add_sock(self.client, lambda g, s: None))
        self.poller.call(self.group.poll)  # the ring now exists and belongs to the poller

    def _on_read(self, g, s):
        buf = bytearray(65536)
        n = s.recv_into(buf)
        if n:
            self.got.extend(buf[:n])

    def poll_until(self, done, polls: int) -> None:
        for _ in range(polls):
            if done():
                break
            self.poller.call(lambda: self.group.poll(timeout=0.01))

    def close(self) -> None:
        for s in (self.server, self.client):
            self.poller.call(s.close)
        self.poller.call(self.group.close)
        self.poller.jobs.put(None)
        self.poller.join(5)
        self.lsock.close()


@pytest.fixture
def served():
    pair = Served()
    yield pair
    pair.close()


def test_every_call_from_a_thread_that_does_not_own_the_ring_is_refused_before_it_changes_anything(served):
    """Issue 10, defect 2: poll, flush, writev_async (and the rest) from a second thread."""
    client, server, group, poller = served.client, served.server, served.group, served.poller
    gi = client._group_impl
    before = (dict(gi._ops), dict(gi._dirty), dict(gi._unarmed), len(client._queued))
    req = netimpl.Request([b"refused"])
    calls = {
        "poll": lambda: group.poll(timeout=0.01),
        "writev_async": lambda: client.writev_async(req),
        "flush": client.flush,
        "writev": lambda: client.writev([b"refused"]),
        "pause_reading": lambda: group.pause_reading(server),
        "remove_sock": lambda: group.remove_sock(server),
        "close": client.close,
    }
    for name, call in calls.items():
        with pytest.raises(OSError) as info:
            call()
        assert info.value.errno == errno.EEXIST and "thread that polls" in str(info.value), name
    assert (dict(gi._ops), dict(gi._dirty), dict(gi._unarmed), len(client._queued)) == before
    assert not req.in_flight and client.queued_bytes == 0 and not server._read_paused
    # The owner's traffic is untouched: its own writes arrive, once, in order.
    for i in range(20):
        poller.call(lambda i=i: client.writev_async(netimpl.Request([b"%02d" % i])))
    want = b"".join(b"%02d" % i for i in range(20))
    served.poll_until(lambda: len(served.got) >= len(want), 200)
    assert bytes(served.got) == want


def test_a_refused_writev_async_is_never_sent(served):
    """Issue 10, defect 3: an exception from writev_async means it queued nothing, even at 64 iovecs."""
    client, poller = served.client, served.poller
    refused = netimpl.Request([b"X"] * 64)  # 64 iovecs: writev_async would flush at once
    with pytest.raises(OSError):
        client.writev_async(refused)
    assert not refused.in_flight and client.queued_bytes == 0
    poller.call(lambda: client.writev_async(netimpl.Request([b"ok"])))
    served.poll_until(lambda: served.got, 100)
    served.poll_until(lambda: False, 5)
    assert bytes(served.got) == b"ok"  # the refused request never went out
    # And the caller may retry it on the right thread: it goes out exactly once.
    poller.call(lambda: client.writev_async(refused))
    served.poll_until(lambda: len(served.got) == 66, 100)
    assert bytes(served.got) == b"ok" + b"X" * 64
