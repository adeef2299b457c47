"""A peer resets a zero-copy connection with requests queued; the failure callback closes or removes the socket.

Over the link (a veth: zero-copy in force), the server queues far more than
the socket buffers hold to a peer that reads nothing, so that at the reset
some requests are in the kernel (zero-copy sends awaiting release) and some
still queued. The contract lets a request callback close its socket or
remove it from its group. Afterwards: every callback ran exactly once, in
queue order, ``poll`` raised nothing, and closing the group is prompt and
gives its resources back (defect 1: ``TypeError`` out of ``poll``, a 5 s
wait in ``close`` and a leaked ring). A callback run by a removal may
remove or close its socket again: that removal must not wait for the
completions the first is dispatching (uring waited 10 s per callback).
"""

from __future__ import annotations

import contextlib
import errno
import time
from collections.abc import Iterator

import pytest

import netimpl
from tests.conftest import open_fds

from .conftest import backend_params, backends_of
from .peers import Peers, digest_reader, reset_client

NREQS, SIZE = 48, 256 << 10
FAILED = {errno.ECONNRESET, errno.EPIPE, errno.ECANCELED}


def _accept(lsock: netimpl.Sock, timeout: float = 10.0) -> netimpl.Sock:
    deadline = time.monotonic() + timeout
    while (sock := lsock.accept()) is None:
        assert time.monotonic() < deadline, "the peer did not connect"
        time.sleep(0.001)
    return sock


@contextlib.contextmanager
def _zero_copy_peers(link, backends: list[str], per_backend: int,
                     client=reset_client) -> Iterator[tuple[netimpl.SockGroup, list, Peers]]:
    """A group and ``per_backend`` zero-copy sockets of each backend, each to a ``client`` peer (by
    default one that reads nothing and resets when told); everything closed afterwards, and no fd
    left behind."""
    base = open_fds()
    group = netimpl.SockGroup()
    lsocks = [netimpl.listen(link.server_ip, 0, impl=b) for b in backends for _ in range(per_backend)]
    socks: list[netimpl.Sock] = []
    peers = Peers(link)
    try:
        for lsock in lsocks:
            peers.start(client, link.server_ip, lsock.getaddr()[1])
            socks.append(_accept(lsock))
        for sock in socks:
            assert sock.zerocopy, "zero-copy should be in force on the veth"
            group.add_sock(sock, _drain)
        yield group, socks, peers
    finally:
        for sock in socks:
            if sock.group is not None:
                sock.group.remove_sock(sock)
            sock.close()
        for lsock in lsocks:
            lsock.close()
        group.close()
        peers.close()
    assert open_fds() == base, "fds leaked (a ring kept after close?)"


def _reset_peers(peers: Peers, ledger, impl: str) -> None:
    for p in peers.pipes:
        p.send("reset")
        assert p.poll(10) and p.recv() == "reset"
    ledger.fault(impl, "peer reset", len(peers.pipes))


@pytest.mark.parametrize("action", ["close", "remove"])
@pytest.mark.parametrize("impl", backend_params())
def test_reset_with_requests_queued_and_socket_closed_in_failure_callback(link, ledger, impl, action):
    calls: dict[int, list[tuple[int, int]]] = {}
    with _zero_copy_peers(link, backends_of(impl), 2) as (group, socks, peers):
        for k, sock in enumerate(socks):
            calls[k] = []

            def done(req, status, k=k, sock=sock):
                calls[k].append((req.ctx, status))
                if status and sock.group is not None and action == "remove":
                    sock.group.remove_sock(sock)
                if status:
                    sock.close()

            for i in range(NREQS):
                sock.writev_async(netimpl.Request([bytearray(SIZE)], cb=done, ctx=i))
        for _ in range(20):                  # some sends in the kernel, the rest still queued
            group.poll(timeout=0.005)
        assert all(len(c) < NREQS for c in calls.values()), "the peer read nothing: requests must be waiting"
        _reset_peers(peers, ledger, impl)
        deadline = time.monotonic() + 10
        while any(len(c) < NREQS for c in calls.values()) and time.monotonic() < deadline:
            group.poll(timeout=0.01)     # the defect: TypeError out of here
        for k, c in calls.items():
            assert [i for i, _ in c] == list(range(NREQS)), f"socket {k}: callbacks {[i for i, _ in c]}"
            statuses = [s for _, s in c]
            assert set(statuses) - {0} <= FAILED and set(statuses) != {0}, f"socket {k}: statuses {statuses}"
            assert socks[k].closed and socks[k].group is None
        group.poll()
        started = time.monotonic()
        group.close()
        took = time.monotonic() - started
        assert took < 2.0, f"SockGroup.close() took {took:.1f} s: it waited for completions it should have had"


@pytest.mark.parametrize("again", ["remove", "close"])
@pytest.mark.parametrize("impl", backend_params())
def test_callbacks_run_by_a_removal_that_remove_or_close_the_socket_again(link, ledger, impl, again):
    """The peer resets while zero-copy sends await release; then, with nothing polled, the server
    removes the socket, and every completion that removal runs removes (or closes) it again.

    A removal waits for the socket's operations; their completions all
    arrive in its first wait, so each callback's own removal starts while
    the rest are still to be dispatched. It must dispatch them, not wait for
    them (it did: 10 s per callback, then ETIMEDOUT out of each). Every
    callback runs once (what the kernel never had completes with the
    removal, the rest on their release: the abort order).
    """
    calls: list[list[int]] = []
    with _zero_copy_peers(link, backends_of(impl), 1) as (group, socks, peers):
        for sock in socks:
            got: list[int] = []
            calls.append(got)

            def done(req, status, sock=sock, got=got):
                got.append(req.ctx)
                if again == "close":
                    sock.close()
                elif sock.group is not None:
                    sock.group.remove_sock(sock)

            for i in range(NREQS):
                sock.writev_async(netimpl.Request([bytearray(SIZE)], cb=done, ctx=i))
        for _ in range(20):                  # some sends in the kernel, the rest still queued
            group.poll(timeout=0.005)
        assert all(len(c) < NREQS for c in calls), "the peer read nothing: requests must be waiting"
        _reset_peers(peers, ledger, impl)
        time.sleep(0.5)                      # the resets arrive; nothing is polled
        for sock in socks:
            started = time.monotonic()
            if sock.group is not None:
                group.remove_sock(sock)
            took = time.monotonic() - started
            assert took < 2.0, f"remove_sock took {took:.1f} s: a nested removal waited for completions"
            sock.close()
        deadline = time.monotonic() + 10     # releases still owed reach their callbacks through the group
        while any(len(c) < NREQS for c in calls) and time.monotonic() < deadline:
            group.poll(timeout=0.01)
        for k, c in enumerate(calls):
            assert sorted(c) == list(range(NREQS)), f"socket {k}: callbacks {c}"
            assert socks[k].closed and socks[k].group is None and socks[k].queued_bytes == 0
        started = time.monotonic()
        group.close()
        assert time.monotonic() - started < 2.0, "SockGroup.close() waited for completions it should have had"


def _drain(group: netimpl.SockGroup, sock: netimpl.Sock) -> None:
    """Read callback: take what comes, and the error of a reset connection (the contract says it raises)."""
    buf = bytearray(4096)
    try:
        while sock.recv_into(buf):
            pass
    except OSError:
        pass


@pytest.mark.parametrize("impl", backend_params())
def test_close_with_zero_copy_sends_awaiting_release_then_close_the_group(link, ledger, impl):
    """A healthy peer; the server closes its sockets while zero-copy sends still await release.

    Every callback runs once, what was sent arrives, ``queued_bytes`` counts
    what still awaits release after the close, and closing the group then
    does not wait for a timeout or keep its ring.
    """
    statuses: list[list[int]] = []
    with _zero_copy_peers(link, backends_of(impl), 1, digest_reader) as (group, socks, peers):
        for sock in socks:
            got: list[int] = []
            statuses.append(got)
            for _ in range(16):
                sock.writev_async(netimpl.Request([bytearray(SIZE)], cb=lambda r, s, got=got: got.append(s)))
        group.poll()
        for sock in socks:
            group.remove_sock(sock)
            sock.close()
        # readable after close: what still awaits its callback (zero-copy releases) counts, and nothing else
        for sock, s in zip(socks, statuses):
            assert sock.queued_bytes == (16 - len(s)) * SIZE, (sock.queued_bytes, len(s))
        deadline = time.monotonic() + 10
        while any(len(s) < 16 for s in statuses) and time.monotonic() < deadline:
            group.poll(timeout=0.01)
        for sock, s in zip(socks, statuses):
            assert len(s) == 16 and set(s) <= {0, errno.ECANCELED}, s
            assert sock.queued_bytes == 0
        started = time.monotonic()
        group.close()
        took = time.monotonic() - started
        assert took < 2.0, f"SockGroup.close() took {took:.1f} s waiting for zero-copy releases"
        for k, p in enumerate(peers.pipes):
            assert p.poll(10), "the peer did not see the end of the stream"
            n, _digest, poisoned = p.recv()
            assert not poisoned and n >= statuses[k].count(0) * SIZE
            ledger.verified(impl, n)


def test_a_reset_while_zero_copy_sends_await_release_keeps_completion_order(ledger):
    """posix, deterministic: the kernel answers ECONNRESET while an earlier zero-copy send awaits release.

    The queued requests fail, but after the pending one, whose release is
    read from the error queue later: requests complete in the order they
    were queued, whatever their status (seen through the link as a rare
    race; scripted here through the posix syscall seam).
    """
    from tests.posix.conftest import force_zerocopy
    from tests.posix.scripted import Scripted, zc_cmsg

    lsock = netimpl.listen("127.0.0.1", 0, impl="posix")
    client = netimpl.connect("127.0.0.1", lsock.getaddr()[1], impl="posix")
    server = _accept(lsock)
    try:
        force_zerocopy(client)
        script = client._sys = Scripted(sends=[None, ConnectionResetError(errno.ECONNRESET, "reset")])
        done: list[tuple[int, int]] = []
        client.writev_async(netimpl.Request([bytes(100)], cb=lambda r, s: done.append((r.ctx, s)), ctx=0))
        client.flush()                     # in the kernel, zero-copy: completes on its release
        for i in (1, 2, 3):
            client.writev_async(netimpl.Request([bytes(100)], cb=lambda r, s: done.append((r.ctx, s)), ctx=i))
        client.flush()                     # ECONNRESET: these fail
        ledger.fault("posix", "peer reset (scripted)")
        script.errqueue.append([zc_cmsg(0, 0)])
        client.flush()                     # the release of request 0 arrives
        assert [i for i, _ in done] == [0, 1, 2, 3], f"completion order {done}"
        assert done[0][1] == 0 and {s for _, s in done[1:]} == {errno.ECONNRESET}, done
    finally:
        for s in (client, server, lsock):
            s.close()
