"""SockGroup's pending-recv list (``SockGroup._ready``).

On the compiled core it is a ``netimpl._native.ReadyList``: an ordered set
of sockets linked through the sockets themselves (SPDK's pending_recv
TAILQ), so the poll appends, takes the first and takes one out without a
dict operation. The Python twin uses a dict of sockets to None. The
ordered-set behaviour below holds for both; what only the linked list
does (refusing what it cannot hold, the references it keeps, its
iteration over a snapshot) is checked on the compiled core.
"""

from __future__ import annotations

import gc
import sys
import weakref

import pytest

import netimpl
from netimpl import accel
from netimpl.accel import ReadyList


@pytest.fixture
def socks(request):
    """Three netimpl sockets (listeners: the cheapest to make)."""
    out = []
    for _ in range(3):
        s = netimpl.listen("127.0.0.1", 0, impl="posix")
        request.addfinalizer(s.close)
        out.append(s)
    return out


def compiled():
    if accel.native is None:
        pytest.skip("the Python twin runs (NETIMPL_NATIVE=0): its pending-recv list is a dict")
    return accel.native


def test_a_group_keeps_its_pending_recv_list_in_a_ready_list():
    g = netimpl.SockGroup()
    try:
        assert type(g._ready) is ReadyList and len(g._ready) == 0 and not g._ready
    finally:
        g.close()


def test_the_pending_recv_list_is_an_ordered_set(socks):
    a, b, c = socks
    rl = ReadyList()
    for s in (a, b, c, a):
        rl[s] = None
    assert list(rl) == [a, b, c] and len(rl) == 3 and rl
    assert b in rl and object() not in rl
    del rl[b]
    assert list(rl) == [a, c] and b not in rl
    rl[b] = None
    assert list(rl) == [a, c, b]  # back of the list
    assert rl.pop(a, 7) is None and rl.pop(a, 7) == 7 and list(rl) == [c, b]
    with pytest.raises(KeyError):
        rl.pop(a)
    with pytest.raises(KeyError):
        del rl[a]
    rl.clear()
    assert list(rl) == [] and len(rl) == 0 and not rl


def test_a_ready_list_refuses_what_it_cannot_hold(socks):
    native = compiled()
    a, b, _ = socks
    rl, other = native.ReadyList(), native.ReadyList()
    with pytest.raises(TypeError, match="not 'x'"):
        rl["x"] = None
    with pytest.raises(TypeError, match="not 1"):
        rl[a] = 1
    with pytest.raises(TypeError, match="no arguments"):
        native.ReadyList([a])
    with pytest.raises(TypeError, match="1 or 2 arguments"):
        rl.pop()
    other[a] = None
    with pytest.raises(ValueError, match="another group"):
        rl[a] = None
    assert list(rl) == [] and list(other) == [a]
    del other[a]
    rl[a] = None  # free to join another list once out
    assert list(rl) == [a] and rl[a] is None
    with pytest.raises(KeyError):
        rl[b]


def test_a_ready_list_holds_a_reference_to_each_member_until_it_leaves():
    native = compiled()
    a = netimpl.listen("127.0.0.1", 0, impl="posix")
    try:
        rl = native.ReadyList()
        counts = [sys.getrefcount(a)]
        rl[a] = None
        counts.append(sys.getrefcount(a))
        del rl[a]
        counts.append(sys.getrefcount(a))
        rl[a] = None
        rl.pop(a)
        counts.append(sys.getrefcount(a))
        rl[a] = None
        rl.clear()
        counts.append(sys.getrefcount(a))
        rl[a] = None
        del rl  # its members go with it
        counts.append(sys.getrefcount(a))
        n = counts[0]
        assert counts == [n, n + 1, n, n, n, n]
    finally:
        a.close()


def test_iterating_a_ready_list_sees_it_as_it_was_when_the_loop_began(socks):
    native = compiled()
    rl = native.ReadyList()
    for s in socks:
        rl[s] = None
    seen = []
    for s in rl:
        seen.append(s)
        del rl[s]
    assert seen == socks and len(rl) == 0
    assert repr(rl) == "<netimpl ReadyList of 0 sockets>"


def test_a_ready_list_in_a_reference_cycle_is_collected():
    compiled()
    s = netimpl.listen("127.0.0.1", 0, impl="posix")
    s.close()
    rl = ReadyList()
    rl[s] = None
    s.cycle = rl  # the list holds the socket, the socket the list: collected only if the list is traversed
    ref = weakref.ref(s)
    del s, rl
    gc.collect()
    assert ref() is None
