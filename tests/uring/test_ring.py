"""The io_uring core: round trips, backpressure, overflow, teardown, errno translation."""

from __future__ import annotations

import errno
import select
import socket
import threading

import pytest

from netimpl.uring.ring import ERRNO_NOTES, Ring, _bridge, check, lib
from tests.conftest import open_fds

SENTINEL = 0x5EADBEEF_CAFEF00D  # bit 63 is the ring's own (multishot receives)


def test_nop_round_trip_keeps_user_data():
    with Ring(4, 8) as r:
        r.prep_nop(SENTINEL)
        assert r.sq_pending() == 1
        assert r.submit(1, 1.0) == 1
        assert list(r.reap()) == [(SENTINEL, 0, 0)]
        assert list(r.reap()) == []


def test_reaping_into_anything_but_a_list_is_refused_and_keeps_the_cqe():
    with Ring(4, 8) as r:
        r.prep_nop(SENTINEL)
        r.submit(1, 1.0)
        with pytest.raises(TypeError):
            _bridge.reap(r.addr, (), 8)
        assert r.cq_ready() == 1
        assert r.reap() == [(SENTINEL, 0, 0)]


def test_a_user_data_with_bit_63_is_refused_before_anything_is_prepared():
    with Ring(4, 8) as r:
        with pytest.raises(ValueError, match="bit 63"):
            r.prep_nop(1 << 63)
        assert r.sq_pending() == 0


def test_setup_flags_asked_for_are_in_force():
    with Ring(8, 16) as r:
        # this kernel (6.1+) takes both; older ones fall back without them
        assert r.setup_flags & lib.IORING_SETUP_SINGLE_ISSUER
        assert r.setup_flags & lib.IORING_SETUP_DEFER_TASKRUN
        assert r.sq_entries == 8 and r.cq_entries == 16


def test_full_sq_applies_backpressure_and_loses_nothing():
    with Ring(4, 64) as r:
        for i in range(50):  # more than the SQ holds: preps submit as it fills
            r.prep_nop(i)
            assert r.sq_space() <= 4
        r.submit()
        assert sorted(ud for ud, _, _ in r.reap()) == list(range(50))


def test_cq_overflow_is_held_by_the_kernel_and_reaped_in_full():
    with Ring(8, 16) as r:
        for i in range(200):
            r.prep_nop(i)
        r.submit()  # 200 completions for a 16-entry CQ: most overflow
        got = [ud for ud, _, _ in r.reap()]
        assert sorted(got) == list(range(200))
        assert r.cq_ready() == 0


def test_teardown_with_operations_in_flight_releases_everything():
    before = open_fds()
    a, b = socket.socketpair()
    r = Ring(8, 16)
    r.prep_poll_add(a.fileno(), select.POLLIN, 7)  # never completes: nothing is written
    r.submit()
    assert list(r.reap()) == []
    r.close()
    r.close()  # idempotent
    a.close()
    b.close()
    assert open_fds() == before


def test_poll_completes_with_the_ready_mask():
    a, b = socket.socketpair()
    with Ring(8, 16) as r:
        r.prep_poll_add(a.fileno(), select.POLLIN, 1)
        r.submit()
        b.send(b"x")
        r.submit(1, 1.0)
        ((ud, res, _),) = list(r.reap())
        assert ud == 1 and res & select.POLLIN
    a.close()
    b.close()


def test_cancel_by_fd_cancels_a_pending_poll():
    a, b = socket.socketpair()
    with Ring(8, 16) as r:
        r.prep_poll_add(a.fileno(), select.POLLIN, 1)
        r.submit()
        r.prep_cancel_fd(a.fileno(), 2)
        r.submit(2, 1.0)
        res = dict((ud, res) for ud, res, _ in r.reap())
        assert res == {1: -errno.ECANCELED, 2: 1}
    a.close()
    b.close()


def test_wait_with_timeout_returns_without_completions():
    with Ring(4, 8) as r:
        assert r.submit(1, 0.05) == 0
        assert list(r.reap()) == []


def test_errno_translation_names_the_call_and_the_cause():
    assert check(5, "x") == 5
    with pytest.raises(OSError) as info:
        check(-errno.EINVAL, "io_uring_setup")
    assert info.value.errno == errno.EINVAL
    assert "io_uring_setup" in str(info.value) and ERRNO_NOTES[errno.EINVAL] in str(info.value)
    with pytest.raises(OSError) as info:
        Ring(0, 0)  # zero entries: the kernel says EINVAL
    assert info.value.errno == errno.EINVAL and "io_uring_setup" in str(info.value)


def test_single_issuer_ring_refuses_another_thread():
    with Ring(4, 8) as r:
        r.prep_nop(1)
        r.submit()
        list(r.reap())
        caught: list[BaseException] = []

        def other():
            try:
                r.prep_nop(2)
                r.submit()
            except OSError as exc:
                caught.append(exc)

        t = threading.Thread(target=other)
        t.start()
        t.join()
        assert caught and caught[0].errno == errno.EEXIST
        assert "SINGLE_ISSUER" in str(caught[0])


def test_sendmsg_round_trip_through_the_ring():
    from netimpl.uring.ring import ffi

    a, b = socket.socketpair()
    payload = [b"hello ", bytearray(b"ring"), b"!"]
    with Ring(4, 8) as r:
        send = ffi.new("struct ni_send *")
        keep = [ffi.from_buffer(p) for p in payload]
        for i, (ptr, p) in enumerate(zip(keep, payload)):
            send.iov[i].iov_base = ptr
            send.iov[i].iov_len = len(p)
        send.iovcnt = len(payload)
        send.fd = a.fileno()
        send.user_data = 42
        r.prep_send(send)
        r.submit(1, 1.0)
        assert list(r.reap()) == [(42, 11, 0)]
        send.iovcnt = 0
        with pytest.raises(OSError) as info:
            r.prep_send(send)  # no iovecs: refused before it reaches the kernel
        assert info.value.errno == errno.EINVAL
    assert b.recv(100) == b"hello ring!"
    a.close()
    b.close()


def test_memoryview_buffers_left_in_a_garbage_cycle_do_not_crash_the_collector():
    """cffi handles on memoryviews, collected in one cycle with them, crashed the interpreter.

    The ring now reads addresses through the buffer protocol in C and keeps
    no handle; the frame of ``hold`` is kept in a cycle by its own exception.
    """
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import gc, socket
        from netimpl.uring.ring import Ring, ffi

        def hold():
            a, b = socket.socketpair()
            ring = Ring(4, 8)
            send = ffi.new("struct ni_send *")
            send.fd = a.fileno()
            payload = [memoryview(b"!"), memoryview(bytearray(64))[8:], bytearray(b"x")]
            ring.prep_send_bufs(send, payload)
            ring.submit(1, 1.0)
            assert [res for _, res, _ in ring.reap()] == [58]
            try:
                raise OSError(1, "keeps this frame in a cycle")
            except OSError as exc:
                err = exc

        hold()
        gc.collect()
        print("survived")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "survived" in out.stdout, out.stderr[-2000:]


def test_send_from_a_buffer_list_and_its_refusals():
    from netimpl.uring.ring import ffi

    a, b = socket.socketpair()
    with Ring(4, 8) as r:
        send = ffi.new("struct ni_send *")
        send.fd = a.fileno()
        send.user_data = 9
        bufs = [b"abc", bytearray(b"de"), memoryview(b"xfgx")[1:3]]  # alive until the CQE: the contract
        r.prep_send_bufs(send, bufs)
        r.submit(1, 1.0)
        assert list(r.reap()) == [(9, 7, 0)]
        assert b.recv(16) == b"abcdefg"
        for bad in ([], [b"x"] * 65, [b"ok", 12], (b"tuple",)):
            with pytest.raises(OSError) as info:
                r.prep_send_bufs(send, bad)
            assert info.value.errno == errno.EINVAL
        assert r.sq_pending() == 0  # nothing half-prepared
    a.close()
    b.close()


def test_a_waiting_enter_lets_other_threads_run_and_reaps_what_came():
    """_bridge.enter releases the GIL while it waits, and only waits while the CQ is empty."""
    with Ring(4, 8) as r:
        ticks = [0]
        stop = threading.Event()

        def spin():
            while not stop.is_set():
                ticks[0] += 1

        t = threading.Thread(target=spin)
        t.start()
        try:
            out: list = []
            before = ticks[0]
            r.enter(True, 0.3, out)  # nothing in flight: waits the whole timeout
            during = ticks[0] - before  # read at once: the spinner ran only if the wait let go of the GIL
            assert out == [] and during > 1000
        finally:
            stop.set()
            t.join()
        r.prep_nop(SENTINEL)
        r.submit()
        out = []
        r.enter(True, 5.0, out)  # a CQE is there already: no wait
        assert out == [(SENTINEL, 0, 0)]
