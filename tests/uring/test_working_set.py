"""The provided-buffer ring's working set: receives land in buffers filled lately, not in a sweep
of the whole ring; a burst grows the set, steady traffic shrinks it back; nothing is lost."""

from __future__ import annotations

import pytest

import netimpl
from netimpl.uring.ring import ffi
from tests.uring.test_multishot import gi_of, pair, payload, poll_until, reader

ENTRIES, SIZE = 512, 256
WANT_MIN = 64  # ring.h's NI_BUF_WANT_MIN


def _ws(group) -> dict:
    br = gi_of(group)._bufring
    ws = br.working_set()
    ws["avail"] = br.avail()
    # Whenever the ring holds fewer than it wants, no buffer waits spare (or a receive could
    # find the ring empty with buffers free).
    assert ws["avail"] >= ws["want"] or ws["spare"] == 0, ws
    return ws


def _round_trips(request, group, n: int, size: int = 50):
    """n messages of ``size`` bytes, each read with recv_next before the next is sent: the
    addresses of the provided buffers they arrived in."""
    seen: list[int] = []
    got = bytearray()

    def on_read(g, s):
        while (view := s.recv_next()):
            seen.append(int(ffi.cast("uintptr_t", ffi.from_buffer(view))))
            got.extend(view)
            view.release()

    server, client = pair(request, group, on_read)
    sent = bytearray()

    def arrived() -> bool:
        return len(got) == len(sent)

    for i in range(n):
        msg = payload(size, i)
        sent += msg
        client.writev([msg])
        poll_until(group, arrived)
        _ws(group)
    assert bytes(got) == bytes(sent)
    return server, seen


def test_steady_small_receives_keep_to_a_working_set_not_the_whole_ring(request, small_buffers):
    small_buffers(ENTRIES, SIZE)
    group = netimpl.SockGroup()
    server, seen = _round_trips(request, group, 400)
    # A ring that published all its buffers would have had the kernel fill each of 400 in turn.
    # The set is the buffers the ring keeps published, and the one a read holds at each reap.
    assert len(set(seen)) <= WANT_MIN + 1, len(set(seen))
    ws = _ws(group)
    assert ws["want"] == WANT_MIN and ws["avail"] + ws["spare"] == ENTRIES
    group.remove_sock(server)
    group.close()


def test_a_burst_grows_the_working_set_then_steady_traffic_shrinks_it(request, small_buffers):
    small_buffers(ENTRIES, SIZE)
    group = netimpl.SockGroup()
    got = bytearray()
    # A buffer's worth a read: every byte comes through the ring (a read with room for more
    # may receive past it, test_direct_recv.py).
    server, client = pair(request, group, reader(got, SIZE))
    poll_until(group, lambda: server._poll_armed)
    burst = payload(300 * SIZE, 3)  # far more than the working set's 64 buffers
    client.writev([burst])
    poll_until(group, lambda: len(got) == len(burst))
    assert bytes(got) == burst
    ws = _ws(group)
    assert ws["grown"] >= 1 and ws["want"] > WANT_MIN, ws
    group.remove_sock(server)

    # Then one small message at a time: the set halves after each window in which the ring
    # never fell below half, back to its floor.
    for _ in range(8):
        if _ws(group)["want"] == WANT_MIN:
            break
        group.remove_sock(_round_trips(request, group, 1000, 8)[0])
    ws = _ws(group)
    assert ws["want"] == WANT_MIN and ws["shrunk"] >= 1, ws
    assert ws["avail"] + ws["spare"] == ENTRIES  # every buffer free again
    group.close()


def test_buffers_held_by_a_paused_socket_leave_the_working_set_refilled_from_spare(request, small_buffers):
    small_buffers(ENTRIES, SIZE)
    group = netimpl.SockGroup()
    held_got = bytearray()
    reading = [True]
    held, held_client = pair(request, group, reader(held_got, SIZE, reading))
    poll_until(group, lambda: held._poll_armed)
    reading[0] = False
    data = payload(100 * SIZE, 5)  # more buffers than the working set, held unread
    held_client.writev([data])
    poll_until(group, lambda: held._rxq.bytes == len(data))
    group.pause_reading(held)
    ws = _ws(group)
    assert ws["avail"] >= ws["want"] >= WANT_MIN  # refilled from spare: the others receive as before
    assert ws["avail"] + ws["spare"] == ENTRIES - 100

    other, _ = _round_trips(request, group, 200)
    assert not gi_of(group)._starved

    reading[0] = True
    group.resume_reading(held)
    poll_until(group, lambda: len(held_got) == len(data))
    assert bytes(held_got) == data
    ws = _ws(group)
    assert ws["avail"] + ws["spare"] == ENTRIES
    for s in (held, other):
        group.remove_sock(s)
    group.close()


@pytest.mark.parametrize("entries", [4, WANT_MIN])
def test_a_ring_no_larger_than_the_floor_publishes_every_buffer(request, small_buffers, entries):
    small_buffers(entries, SIZE)
    group = netimpl.SockGroup()
    server, _ = _round_trips(request, group, 20)
    ws = _ws(group)
    assert ws["want"] == entries and ws["spare"] == 0 and ws["avail"] == entries
    group.remove_sock(server)
    group.close()
