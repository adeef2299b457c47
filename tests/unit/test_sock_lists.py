"""A group's pending-recv list (``SockGroup._ready``) and a group impl's dirty list (``GroupImpl._dirty``).

On the compiled core they are a ``netimpl._native.ReadyList`` and a
``DirtyList``: ordered sets of sockets linked through the sockets
themselves (SPDK's pending_recv TAILQ), so a pass appends, takes the
first and takes one out without a dict operation. The Python twin uses
dicts of sockets to None. The ordered-set behaviour below holds for both;
what only the linked lists do (refusing what they cannot hold, the
references they keep, iteration over a snapshot) is checked on the
compiled core.
"""

from __future__ import annotations

import gc
import sys
import weakref

import pytest

import netimpl
from netimpl import accel
from netimpl.accel import DirtyList, ReadyList

KINDS = pytest.mark.parametrize("kind", [ReadyList, DirtyList], ids=["ReadyList", "DirtyList"])


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
        pytest.skip("the Python twin runs (NETIMPL_NATIVE=0): its socket lists are dicts")
    return accel.native


def test_a_group_keeps_its_pending_recv_list_in_a_ready_list_and_its_impls_their_dirty_lists(socks):
    g = netimpl.SockGroup()
    try:
        assert type(g._ready) is ReadyList and len(g._ready) == 0 and not g._ready
        g.add_sock(socks[0], lambda grp, s: None)
        gi = socks[0]._group_impl
        assert type(gi._dirty) is DirtyList and dict(gi._dirty) == {}
        g.remove_sock(socks[0])
    finally:
        g.close()


def test_a_socket_is_in_a_ready_list_and_a_dirty_list_at_once(socks):
    a, b, _ = socks
    ready, dirty = ReadyList(), DirtyList()
    ready[a] = ready[b] = None
    dirty[b] = dirty[a] = None
    assert list(ready) == [a, b] and list(dirty) == [b, a]
    del ready[a]
    assert list(ready) == [b] and list(dirty) == [b, a] and list(dirty.keys()) == [b, a]


@KINDS
def test_a_socket_list_is_an_ordered_set(socks, kind):
    a, b, c = socks
    rl = kind()
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


@KINDS
def test_a_socket_list_refuses_what_it_cannot_hold(socks, kind):
    compiled()
    a, b, _ = socks
    rl = kind()
    with pytest.raises(TypeError, match="not 'x'"):
        rl["x"] = None
    with pytest.raises(TypeError, match="not 1"):
        rl[a] = 1
    with pytest.raises(TypeError, match="no arguments"):
        kind([a])
    with pytest.raises(TypeError, match="1 or 2 arguments"):
        rl.pop()
    with pytest.raises(KeyError, match="empty"):
        rl.popfirst()
    rl[a] = None
    assert rl[a] is None
    with pytest.raises(KeyError):
        rl[b]


@KINDS
def test_a_socket_joins_one_list_of_a_kind_and_leaves_the_one_it_was_on(kind):
    """A socket is on one pending-recv (or dirty) list at most: one left on a group's list when it
    moved to another group must not keep it from the new group's, nor be served by the old."""
    compiled()
    a = netimpl.listen("127.0.0.1", 0, impl="posix")
    try:
        old, new, other = kind(), kind(), ReadyList if kind is DirtyList else DirtyList
        old[a] = None
        before = sys.getrefcount(a)
        new[a] = None
        after = sys.getrefcount(a)
        assert after == before  # the list's reference moved with it
        assert list(old) == [] and list(new) == [a]
        third = other()
        third[a] = None  # a list of the other kind is another link: it stays on new
        assert list(new) == [a] and list(third) == [a]
        new.clear()
        third.clear()
    finally:
        a.close()


def test_popfirst_takes_the_sockets_in_order(socks):
    for kind in (ReadyList, DirtyList):
        rl = kind()
        for s in reversed(socks):
            rl[s] = None
        assert [rl.popfirst() for _ in socks] == socks[::-1] and not rl
        with pytest.raises(KeyError):
            rl.popfirst()


def test_a_closed_group_lets_go_of_what_its_pending_recv_list_held(socks):
    g = netimpl.SockGroup()
    g._ready[socks[0]] = None  # as a socket that left it while found readable would be
    g.close()
    assert len(g._ready) == 0


@KINDS
def test_a_socket_list_holds_a_reference_to_each_member_until_it_leaves(kind):
    compiled()
    a = netimpl.listen("127.0.0.1", 0, impl="posix")
    try:
        rl = kind()
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


@KINDS
def test_iterating_a_socket_list_sees_it_as_it_was_when_the_loop_began(socks, kind):
    compiled()
    rl = kind()
    for s in socks:
        rl[s] = None
    seen = []
    for s in rl:
        seen.append(s)
        del rl[s]
    assert seen == socks and len(rl) == 0
    assert repr(rl) == f"<netimpl {kind.__name__} of 0 sockets>"


@KINDS
def test_a_socket_list_in_a_reference_cycle_is_collected(kind):
    compiled()
    s = netimpl.listen("127.0.0.1", 0, impl="posix")
    s.close()
    rl = kind()
    rl[s] = None
    s.cycle = rl  # the list holds the socket, the socket the list: collected only if the list is traversed
    ref = weakref.ref(s)
    del s, rl
    gc.collect()
    assert ref() is None
