"""uring's recv_next: provided buffers lent to the caller, and given back to their ring."""

from __future__ import annotations

import functools
import gc
import select
import threading

import pytest

import netimpl
from netimpl.uring import group as ugroup
from netimpl.uring.ring import _bridge
from tests.uring.test_multishot import gi_of, pair, payload, poll_until


def _lend_all(sock, held):
    while True:
        view = sock.recv_next()
        if not view:
            return view
        held.append(view)


def _lending_pair(request, small_buffers, entries, size, data):
    """(group, server, client, held): ``data`` sent and lent, every view of it in ``held``."""
    small_buffers(entries, size)
    group = netimpl.SockGroup()
    held: list = []
    server, client = pair(request, group, lambda g, s: _lend_all(s, held))
    client.writev([data])
    poll_until(group, lambda: sum(map(len, held)) == len(data))
    return group, server, client, held


def test_views_are_the_ring_buffers_themselves_and_go_back_when_released(request, small_buffers):
    data = payload(8 * 1024, 1)
    group, server, client, held = _lending_pair(request, small_buffers, 16, 1024, data)
    br = gi_of(group)._bufring
    assert [type(v.obj).__name__ for v in held] == ["LentBuffer"] * 8  # no copy: one view per buffer filled
    assert br.lent() == 8 and br.avail() == 16 - 8
    assert b"".join(held) == data
    for i, v in enumerate(held):
        v.release()
        assert br.lent() == 7 - i
    assert br.avail() == 16
    # A view dropped without release() goes back too, slices and all, with its last reference.
    client.writev([payload(1024, 2)])
    held.clear()
    poll_until(group, lambda: held)
    part = held[0][100:200]
    held.clear()
    assert br.lent() == 1 and bytes(part) == payload(1024, 2)[100:200]
    del part
    gc.collect()
    assert br.lent() == 0 and br.avail() == 16
    group.remove_sock(server)
    group.close()


def test_views_kept_for_long_pin_half_the_ring_at_most_and_never_stall_receiving(request, small_buffers):
    data = payload(16 * 1024, 3)
    group, server, client, held = _lending_pair(request, small_buffers, 4, 1024, data)
    kinds = [type(v.obj).__name__ for v in held]
    assert kinds[:2] == ["LentBuffer"] * 2 and set(kinds[2:]) == {"bytes"}  # then copies: the ring goes on
    assert b"".join(held) == data
    br = gi_of(group)._bufring
    fd = group.fileno()  # as netimpl.aio waits: on the fd, between polls
    group.poll()  # re-arms what the burst ran dry: half the ring is the ring's still
    assert br.lent() == 2 and server._rxq.armed and not gi_of(group)._starved
    # More arrives while every view is still held (a framer waiting for the rest of a message):
    # the group's fd wakes for it, and it is delivered.
    more = payload(5000, 4)
    client.writev([more])
    assert select.select([fd], [], [], 5)[0], "the group's fd stayed quiet"
    poll_until(group, lambda: sum(map(len, held)) == len(data) + len(more))
    assert b"".join(held) == data + more and br.lent() == 2
    for v in held:
        v.release()
    held.clear()
    assert br.lent() == 0 and br.avail() == 4
    client.writev([more])
    poll_until(group, lambda: sum(map(len, held)) == len(more))
    assert type(held[0].obj).__name__ == "LentBuffer"  # lending again
    group.remove_sock(server)
    group.close()


def test_a_view_released_in_another_thread_goes_back_to_the_ring(request, small_buffers):
    data = payload(2048, 9)
    group, server, _client, held = _lending_pair(request, small_buffers, 8, 512, data)
    br = gi_of(group)._bufring
    assert br.lent() == 4
    t = threading.Thread(target=lambda views=held[:]: [v.release() for v in views])
    held.clear()
    t.start()
    t.join()
    assert br.lent() == 0 and br.avail() == 8
    group.remove_sock(server)
    group.close()


def test_a_ring_closed_with_buffers_lent_is_freed_by_the_last_of_them(request, small_buffers):
    data = payload(2048, 5)
    group, server, _client, held = _lending_pair(request, small_buffers, 8, 512, data)
    assert len(held) == 4
    group.remove_sock(server)
    server.close()
    freed = _bridge.lent_rings_freed()
    group.close()  # unregisters the ring; its memory stays with the views
    assert b"".join(held) == data
    for v in held[:-1]:
        v.release()
    assert _bridge.lent_rings_freed() == freed and bytes(held[-1]) == data[-512:]
    held.pop().release()
    assert _bridge.lent_rings_freed() == freed + 1


def test_an_allocation_failing_anywhere_in_a_lend_leaves_the_bytes_held(request, small_buffers):
    _testcapi = pytest.importorskip("_testcapi")
    small_buffers(8, 512)
    group = netimpl.SockGroup()
    server, client = pair(request, group, lambda g, s: None)
    failed = 0
    for start in range(6):  # the n-th allocation from here on fails: the buffer object's, the view's...
        data = payload(512, start)
        client.writev([data])
        poll_until(group, lambda: server._rxq is not None and server._rxq.bytes == 512)
        br = gi_of(group)._bufring
        outcome = _lend_failing_from(_testcapi, server, start)
        if outcome is MemoryError:
            failed += 1
            assert server._rxq.bytes == 512 and br.lent() == 0
            outcome = server.recv_next()
        assert bytes(outcome) == data and br.lent() == 1 and server._rxq.bytes == 0
        outcome.release()
    assert failed >= 2
    group.remove_sock(server)
    group.close()


def _lend_failing_from(_testcapi, server, start):
    # The compiled recv_next counts the bytes in C; the Python twin's count allocates an int, so
    # there the C lend is what is failed.
    lend = server.recv_next if ugroup._compiled else functools.partial(_bridge.rx_lend, server._rxq_addr)
    _testcapi.set_nomemory(start, 0)
    try:
        return lend()
    except MemoryError:
        return MemoryError
    finally:
        _testcapi.remove_mem_hooks()

