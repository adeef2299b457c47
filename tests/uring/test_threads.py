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
