"""Thread misuse: a uring group's ring belongs to the thread that polls it.

Every call that would enter the ring or change the group from another
thread (``poll``, ``flush``, ``writev_async``) must raise before it changes
anything: nothing prepared, nothing sent, no callback run, the owner's
traffic intact (defect 2). A refused ``writev_async`` did nothing: its
request is never sent and its callback never runs (defect 3). In a mixed
group the refusal covers the posix sockets too: one ``poll`` is one call.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest

import netimpl
from tests.uring.test_threads import Poller

from .conftest import backend_params, backends_of

REFUSED = (OSError, RuntimeError)


class Owner(Poller):
    """The thread that owns a group: it runs what it is handed, one job at a time."""

    def stop(self) -> None:
        self.jobs.put(None)
        self.join(10)


class Setup:
    """One accepted socket per backend in a group owned by :class:`Owner`; plain-socket clients."""

    def __init__(self, backends: list[str]) -> None:
        self.owner = Owner()
        self.group = self.owner.call(netimpl.SockGroup)
        self.lsocks, self.socks, self.clients = [], [], []
        for b in backends:
            lsock = netimpl.listen("127.0.0.1", 0, impl=b)
            client = socket.create_connection(("127.0.0.1", lsock.getaddr()[1]), timeout=5)
            client.setblocking(False)
            deadline = time.monotonic() + 5
            while (sock := lsock.accept()) is None:
                assert time.monotonic() < deadline
                time.sleep(0.001)
            self.lsocks.append(lsock)
            self.socks.append(sock)
            self.clients.append(client)
            self.owner.call(lambda sock=sock: self.group.add_sock(sock, self._echo))
        self.owner.call(self.group.poll)   # the ring now exists, on the owner thread
        self.done: list[tuple[str, int]] = []

    @staticmethod
    def _echo(group: netimpl.SockGroup, sock: netimpl.Sock) -> None:
        buf = bytearray(65536)
        n = sock.recv_into(buf)
        if n:
            sock.writev_async(netimpl.Request([buf[:n]]))

    def request(self, tag: str, k: int) -> netimpl.Request:
        return netimpl.Request([tag.encode()], cb=lambda r, s: self.done.append((tag, s)), ctx=k)

    def received(self, k: int, settle: float = 0.05) -> bytes:
        time.sleep(settle)
        out = b""
        while True:
            try:
                chunk = self.clients[k].recv(65536)
            except BlockingIOError:
                return out
            if not chunk:
                return out
            out += chunk

    def close(self) -> None:
        def close_all():
            for s in self.group.socks:
                self.group.remove_sock(s)
            for s in self.socks:
                s.close()
            self.group.close()
        try:
            self.owner.call(close_all)
        finally:
            self.owner.stop()
            for s in self.lsocks:
                s.close()
            for c in self.clients:
                c.close()


@pytest.mark.parametrize("call", ["poll", "flush", "writev_async"])
@pytest.mark.parametrize("impl", backend_params(only=("uring",)))
def test_a_call_from_another_thread_is_refused_before_it_changes_anything(ledger, impl, call):
    backends = backends_of(impl)
    t = Setup(backends)
    try:
        for k, sock in enumerate(t.socks):        # queued by the owner, not yet sent
            t.owner.call(lambda sock=sock, k=k: sock.writev_async(t.request(f"owner{k};", k)))
        uring = next(k for k, s in enumerate(t.socks) if s.impl_name == "uring")
        refused = t.request("refused;", uring)
        with pytest.raises(REFUSED):
            if call == "poll":
                t.group.poll()
            elif call == "flush":
                t.socks[uring].flush()
            else:
                t.socks[uring].writev_async(refused)
        ledger.fault(impl, "call from a foreign thread")
        for k in range(len(t.socks)):
            assert t.received(k) == b"", f"the refused {call} sent socket {k}'s queued request"
        assert t.done == [], "the refused call ran callbacks"
        for _ in range(5):
            t.owner.call(lambda: t.group.poll(timeout=0.01))
        for k in range(len(t.socks)):
            assert t.received(k) == f"owner{k};".encode(), f"socket {k}: the owner's request, exactly once"
        assert sorted(t.done) == sorted((f"owner{k};", 0) for k in range(len(t.socks))), t.done
        ledger.verified(impl, sum(len(f"owner{k};") for k in range(len(t.socks))))
    finally:
        t.close()


@pytest.mark.parametrize("impl", backend_params(only=("uring",)))
def test_a_refused_writev_async_that_would_flush_at_once_is_never_sent(ledger, impl):
    """Defect 3: with 63 requests queued the 64th flushes at once; from a foreign thread it raises and must
    then have done nothing: not queued, never sent, its callback never run."""
    t = Setup(backends_of(impl))
    try:
        uring = next(k for k, s in enumerate(t.socks) if s.impl_name == "uring")
        sock = t.socks[uring]

        def queue_63():
            for i in range(netimpl.sock.IOV_BATCH_SIZE - 1):
                sock.writev_async(t.request(f"{i};", uring))

        t.owner.call(queue_63)
        with pytest.raises(REFUSED):
            sock.writev_async(t.request("refused;", uring))
        ledger.fault(impl, "call from a foreign thread")
        for _ in range(5):
            t.owner.call(lambda: t.group.poll(timeout=0.01))
        want = "".join(f"{i};" for i in range(netimpl.sock.IOV_BATCH_SIZE - 1)).encode()
        got = t.received(uring)
        assert b"refused;" not in got, "the refused request was sent anyway"
        assert got == want
        assert ("refused;", 0) not in t.done and len(t.done) == netimpl.sock.IOV_BATCH_SIZE - 1, t.done[-3:]
        ledger.verified(impl, len(got))
    finally:
        t.close()


@pytest.mark.parametrize("impl", backend_params(only=("uring",)))
def test_foreign_calls_while_the_owner_serves_never_corrupt_its_traffic(ledger, impl):
    """The owner echoes; meanwhile another thread keeps calling poll and flush, each refused.

    (The uring sockets' flush: a posix socket has no ring to guard, and its
    flush from another thread is not refused, even in a mixed group.)
    """
    t = Setup(backends_of(impl))
    stop = threading.Event()
    refused = [0]
    calls = [0]

    def meddle():
        while not stop.is_set():
            for fn in (t.group.poll, *(s.flush for s in t.socks if s.impl_name == "uring")):
                calls[0] += 1
                try:
                    fn()
                except REFUSED:
                    refused[0] += 1
            time.sleep(0.0005)

    meddler = threading.Thread(target=meddle, daemon=True)
    try:
        t.owner.jobs.put(lambda: _serve(t.group, stop))
        meddler.start()
        total = 0
        for i in range(200):
            for k, c in enumerate(t.clients):
                msg = f"{i}:{k};".encode() * 50
                c.sendall(msg)
                got = b""
                deadline = time.monotonic() + 5
                while len(got) < len(msg):
                    assert time.monotonic() < deadline, f"echo {i} on socket {k}: {len(got)} of {len(msg)} bytes"
                    try:
                        got += c.recv(65536)
                    except BlockingIOError:
                        time.sleep(0.0002)
                assert got == msg, f"echo {i} on socket {k} came back wrong"
                total += 2 * len(msg)
        stop.set()
        meddler.join(5)
        kind, value = t.owner.results.get(timeout=10)
        assert kind == "ok", f"the owner's loop failed: {value!r}"
        assert refused[0] == calls[0] > 0, f"{calls[0] - refused[0]} of {calls[0]} foreign calls went through"
        ledger.verified(impl, total)
        ledger.fault(impl, "call from a foreign thread", calls[0])
    finally:
        stop.set()
        if meddler.is_alive():
            meddler.join(5)
        t.close()


def _serve(group: netimpl.SockGroup, stop: threading.Event) -> None:
    while not stop.is_set():
        group.poll(timeout=0.002)
