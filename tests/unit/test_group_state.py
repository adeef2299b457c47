"""The state a poll reads, held as C fields on the compiled core (netimpl._native.GroupCore and friends).

``SockGroup``, ``GroupImpl`` and ``PosixGroupImpl`` derive from state types
whose fields the compiled poll reads without a lookup; under
``NETIMPL_NATIVE=0`` the same names live in the instance's ``__dict__``.
These check what either way must hold: the attributes behave as ordinary
ones, a poll that finds one missing or of the wrong type raises a clear
error instead of crashing, the objects are still collected when in a
reference cycle, and the abstract base stays abstract.
"""

from __future__ import annotations

import errno
import gc
import socket
import weakref

import pytest

import netimpl
from netimpl import accel, registry
from netimpl.impl import GroupImpl
from netimpl.posix.group import PosixGroupImpl
from tests.conftest import need


def _posix_group(request):
    """A group with one posix socket in it (its peer kept open), and the socket."""
    group = netimpl.SockGroup()
    request.addfinalizer(group.close)  # last: the finalizers run in reverse
    listener = netimpl.listen("127.0.0.1", 0, impl="posix")
    request.addfinalizer(listener.close)
    peer = socket.create_connection(("127.0.0.1", listener.getaddr()[1]))
    request.addfinalizer(peer.close)
    sock = None
    while sock is None:
        sock = listener.accept()
    request.addfinalizer(sock.close)
    group.add_sock(sock, lambda g, s: None)
    return group, sock, peer


def test_the_state_types_are_the_bases_on_the_compiled_core():
    if accel.native is None:
        assert accel.GroupCore.__module__ == "netimpl._pycore"
        return
    native = accel.native
    assert netimpl.SockGroup.__mro__[1] is native.GroupCore
    assert issubclass(GroupImpl, native.GroupImplCore)
    assert PosixGroupImpl.__mro__[1] is native.PosixGroupState


def test_state_attributes_read_and_write_as_ordinary_attributes(request):
    group, sock, _ = _posix_group(request)
    gi = group._impls["posix"]
    assert group._closed is False and group._wake_fd == -1 and group._busy is False
    assert gi._owner == 0 and gi.impl is sock._impl and dict(gi._dirty) == {}
    assert gi._fds[sock._fd] is sock and gi._epfd == gi.fileno()
    gi._owner = 12345
    assert gi._owner == 12345
    gi._owner = 0
    group._busy = True
    assert group._busy is True
    group._busy = False


def test_a_poll_whose_group_impl_lost_a_state_attribute_raises_naming_it(request):
    group, sock, peer = _posix_group(request)
    gi = group._impls["posix"]
    fds = gi._fds
    del gi._fds
    try:
        peer.sendall(b"x")
        with pytest.raises(AttributeError, match="_fds"):
            group.poll(timeout=0.5)
    finally:
        gi._fds = fds
    got = []
    group.remove_sock(sock)
    group.add_sock(sock, lambda g, s: got.append(s.recv_into(bytearray(8))))
    for _ in range(100):
        if group.poll(timeout=0.05):
            break
    assert got == [1]


def test_a_poll_whose_state_has_the_wrong_type_raises_type_error(request):
    group, _, _ = _posix_group(request)
    gi = group._impls["posix"]
    gi._want_out, want_out = ["not a set"], gi._want_out
    try:
        if accel.native is None:  # the reference fails where it first uses it
            with pytest.raises(AttributeError, match="discard"):
                group.poll(timeout=0)
        else:
            with pytest.raises(TypeError, match="_want_out"):
                group.poll(timeout=0)
    finally:
        gi._want_out = want_out
    assert group.poll(timeout=0) == 0


def test_integer_and_bool_state_refuses_values_it_cannot_hold(request):
    if accel.native is None:
        pytest.skip("the Python twin keeps the state in __dict__, which takes any value")
    group, _, _ = _posix_group(request)
    gi = group._impls["posix"]
    with pytest.raises(TypeError):
        group._closed = "yes"
    with pytest.raises(TypeError):
        gi._epfd = "3"
    assert group._closed is False and gi._epfd == gi.fileno() and gi._owner == 0


def test_a_closed_group_still_refuses_poll():
    group = netimpl.SockGroup()
    group.close()
    with pytest.raises(OSError) as info:
        group.poll()
    assert info.value.errno == errno.EBADF


@pytest.mark.parametrize("impl", ["posix", "uring"])
def test_groups_in_reference_cycles_are_collected(impl):
    info = next(i for i in netimpl.impls() if i.name == impl)
    need("" if info.available else f"backend {impl} unavailable: {info.reason}")
    listener = netimpl.listen("127.0.0.1", 0, impl=impl)
    peer = socket.create_connection(("127.0.0.1", listener.getaddr()[1]))
    sock = None
    while sock is None:
        sock = listener.accept()
    group = netimpl.SockGroup()
    group.add_sock(sock, lambda g, s: None)
    group.poll(timeout=0)
    gi = group._impls[impl]
    gi.cycle = gi  # held only by themselves once the names below go
    group.cycle = group
    refs = [weakref.ref(group), weakref.ref(gi)]
    group.remove_sock(sock)
    group.close()
    sock.close()
    listener.close()
    peer.close()
    del group, gi, sock
    gc.collect()
    assert [r() for r in refs] == [None, None]


def test_the_group_impl_base_stays_abstract():
    with pytest.raises(TypeError, match="abstract"):
        GroupImpl(registry.get("posix"))  # type: ignore[abstract]


def test_only_a_posix_group_state_class_can_be_the_posix_group_type():
    if accel.native is None:
        pytest.skip("the Python twin has no compiled poll to hand the class to")
    with pytest.raises(TypeError, match="PosixGroupState"):
        accel.native.set_posix_group_type(dict)
    accel.native.set_posix_group_type(PosixGroupImpl)
