"""The generic request life cycle: order, abort, zero-copy waits, re-entrancy."""

from __future__ import annotations

import errno

import pytest

from netimpl import Request
from tests.fakeimpl import FakeSock


def make_reqs(log, n, size=8, **kw):
    return [Request([bytes([65 + i]) * size], cb=lambda r, st, i=i: log.append((i, st)), **kw) for i in range(n)]


def test_requests_complete_in_order_once_fully_sent():
    sock, log = FakeSock(), []
    for r in make_reqs(log, 5):
        sock.writev_async(r)
    assert log == []  # nothing sent before a flush
    sock.budget = 12
    sock.flush()
    assert log == [(0, 0)]  # request 1 is only half sent
    sock.budget = None
    sock.flush()
    assert log == [(i, 0) for i in range(5)]
    assert bytes(sock.sent) == b"".join(bytes([65 + i]) * 8 for i in range(5))
    assert sock.stats.requests_completed == 5


def test_close_cancels_queued_requests_before_returning():
    sock, log = FakeSock(), []
    for r in make_reqs(log, 3):
        sock.writev_async(r)
    sock.close()
    assert log == [(0, errno.ECANCELED), (1, errno.ECANCELED), (2, errno.ECANCELED)]
    assert sock.closes == 1 and sock.stats.requests_aborted == 3
    sock.close()  # idempotent
    assert sock.closes == 1 and sock.fileno() == -1


def test_use_after_close_raises_ebadf():
    sock = FakeSock()
    sock.close()
    for call in (lambda: sock.writev_async(Request([b"x"])), sock.flush, lambda: sock.recv_into(bytearray(1)),
                 lambda: sock.writev([b"x"]), lambda: sock.set_recvbuf(4096)):
        with pytest.raises(OSError) as exc:
            call()
        assert exc.value.errno == errno.EBADF


def test_send_error_completes_every_queued_request_with_the_errno():
    sock, log = FakeSock(), []
    for r in make_reqs(log, 3):
        sock.writev_async(r)
    sock.fail_with = errno.EPIPE
    sock.flush()  # does not raise
    assert log == [(i, errno.EPIPE) for i in range(3)]


def test_zero_copy_request_completes_only_when_released_and_later_ones_wait():
    sock, log = FakeSock(zerocopy=True), []
    reqs = make_reqs(log, 2)
    sock.writev_async(reqs[0])
    sock.flush()
    sock.writev_async(reqs[1])
    sock.flush()
    assert log == []
    sock.release(1)  # the later send is released first: still in order
    assert log == []
    sock.release(0)
    assert log == [(0, 0), (1, 0)]


def test_request_sent_in_several_zero_copy_chunks_waits_for_every_chunk():
    # SPDK #3610: completing on the last chunk alone hands back bytes the kernel still reads.
    sock, log = FakeSock(zerocopy=True), []
    req = make_reqs(log, 1, size=30)[0]
    sock.writev_async(req)
    for _ in range(3):
        sock.budget = 10
        sock.flush()
    assert req._zc_wait == 3 and log == []
    sock.release(0)
    sock.release(2)
    assert log == []
    sock.release(1)
    assert log == [(0, 0)]


def test_partly_sent_zero_copy_request_is_not_handed_back_on_close():
    sock, log = FakeSock(zerocopy=True), []
    a, b = make_reqs(log, 2, size=20)
    sock.writev_async(a)
    sock.writev_async(b)
    sock.budget = 10
    sock.flush()  # a: half of it in the kernel by zero-copy
    sock.close()
    assert log == [(1, errno.ECANCELED)]  # b never reached the kernel
    sock.release(0)
    assert log == [(1, errno.ECANCELED), (0, errno.ECANCELED)]


def test_callback_may_requeue_and_flush_is_deferred_not_recursive():
    sock, log = FakeSock(), []
    again = Request([b"again"], cb=lambda r, st: log.append(("again", st)))

    def first_cb(req, status):
        log.append(("first", status))
        sock.writev_async(again)
        sock.flush()  # deferred while callbacks run
        assert again.in_flight and sock.flush_depth == 1

    sock.writev_async(Request([b"first"], cb=first_cb))
    sock.flush()
    assert log == [("first", 0)]
    assert sock.max_flush_depth == 1
    sock.flush()
    assert log == [("first", 0), ("again", 0)]
    assert bytes(sock.sent) == b"firstagain"


def test_request_can_be_reused_after_its_callback():
    sock, log = FakeSock(), []
    req = Request([b"abc"], cb=lambda r, st: log.append(st))
    sock.writev_async(req)
    with pytest.raises(ValueError, match="already queued"):
        sock.writev_async(req)
    sock.flush()
    sock.writev_async(req)
    sock.flush()
    assert log == [0, 0] and bytes(sock.sent) == b"abcabc"


def test_callback_may_close_its_socket_and_the_close_waits_for_callbacks_to_return():
    sock, log = FakeSock(), []

    def closing_cb(req, status):
        log.append(("closer", status))
        sock.close()
        assert sock.closed and sock.closes == 0  # backend close deferred

    sock.writev_async(Request([b"1"], cb=closing_cb))
    sock.writev_async(Request([b"2"], cb=lambda r, st: log.append(("second", st))))
    sock.writev_async(Request([b"3"], cb=lambda r, st: log.append(("third", st))))
    sock.budget = 1
    sock.flush()
    assert log == [("closer", 0), ("second", errno.ECANCELED), ("third", errno.ECANCELED)]
    assert sock.closes == 1


def test_exception_from_a_callback_is_raised_after_every_completion_ran():
    sock, log = FakeSock(), []

    def bad(req, status):
        log.append("bad")
        raise RuntimeError("boom")

    sock.writev_async(Request([b"a"], cb=bad))
    sock.writev_async(Request([b"b"], cb=lambda r, st: log.append("good")))
    with pytest.raises(RuntimeError, match="boom"):
        sock.flush()
    assert log == ["bad", "good"]
    assert not sock._queued and not sock._pending
    sock.flush()  # the error was raised once


def test_64_iovecs_flush_at_once():
    sock = FakeSock()
    for _i in range(63):
        sock.writev_async(Request([b"x"]))
    assert len(sock.sent) == 0
    sock.writev_async(Request([b"y"]))
    assert len(sock.sent) == 64


def test_bad_requests_are_rejected_with_the_value_named():
    sock = FakeSock()
    with pytest.raises(TypeError, match="Request"):
        sock.writev_async(b"raw bytes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="bufs\\[1\\]"):
        Request([b"ok", 12])
    with pytest.raises(TypeError, match="single buffer"):
        Request(b"abc")
    with pytest.raises(TypeError, match="callable"):
        Request([b"x"], cb=3)  # type: ignore[arg-type]


def test_any_buffer_type_is_sent_byte_for_byte():
    import array
    import mmap

    sock = FakeSock()
    m = mmap.mmap(-1, 4)
    m.write(b"mmap")
    arr = array.array("I", [0x01020304])
    sock.writev_async(Request([bytearray(b"ba"), memoryview(b"mv"), m, arr]))
    sock.flush()
    assert bytes(sock.sent) == b"bamvmmap" + arr.tobytes()
    m.close()


def test_zero_length_requests_complete_in_order():
    sock, log = FakeSock(), []
    sock.writev_async(Request([b"a"], cb=lambda r, st: log.append("a")))
    sock.writev_async(Request([], cb=lambda r, st: log.append("empty")))
    sock.writev_async(Request([b""], cb=lambda r, st: log.append("empty2")))
    sock.flush()
    assert log == ["a", "empty", "empty2"]


def test_request_buffers_memoryviews_of_any_shape_count_in_bytes_and_strided_ones_are_refused():
    import array

    words = array.array("I", range(4))                      # 16 bytes, itemsize 4
    grid = memoryview(bytearray(12)).cast("B", (3, 4))      # 2-D bytes
    req = Request([memoryview(bytes(10))[2:5], grid, memoryview(words), b"x"])
    assert req.nbytes == 3 + 12 + 16 + 1
    assert [len(b) for b in req.bufs] == [3, 12, 16, 1]
    with pytest.raises(ValueError, match=r"bufs\[1\] is not a contiguous"):
        Request([b"ok", memoryview(bytes(10))[::2]])


def test_queued_bytes_counts_requests_until_their_callbacks_run():
    sock, seen = FakeSock(), []
    reqs = [Request([bytes(10)], cb=lambda r, st: seen.append(sock.queued_bytes)) for _ in range(3)]
    for r in reqs:
        sock.writev_async(r)
    assert sock.queued_bytes == 30
    sock.budget = 15  # one whole, one half: the half-sent one counts whole
    sock.flush()
    assert seen == [20] and sock.queued_bytes == 20
    sock.close()
    assert seen == [20, 10, 0] and sock.queued_bytes == 0


def test_sock_completions_counts_every_callback_in_the_process():
    from netimpl import Sock

    sock, log = FakeSock(), []
    before = Sock.completions
    for r in make_reqs(log, 3):
        sock.writev_async(r)
    sock.flush()
    assert Sock.completions == before + 3 and len(log) == 3
