"""posix flush through a scripted sendmsg: partial writes, batching, zero-copy chunking, errors."""

from __future__ import annotations

import errno

from netimpl import Request
from netimpl.sock import MIN_SOCK_PIPE_SIZE
from netimpl._kernel import MSG_ZEROCOPY
from tests.posix.conftest import force_zerocopy
from tests.posix.scripted import Scripted, zc_cmsg


def data(n: int, seed: int = 0) -> bytes:
    return bytes((seed + i) % 251 for i in range(n))


def test_partial_writes_resume_at_the_right_offset(pair):
    client, _ = pair
    script = client._sys = Scripted(sends=[10, 24, 30])
    payload = data(64)
    log = []
    client.writev_async(Request([payload[0:16], payload[16:32], payload[32:48], payload[48:64]],
                                cb=lambda r, st: log.append(st)))
    client.flush()
    assert script.calls[-1]["iovs"] == [16, 16, 16, 16] and log == []
    client.flush()
    assert script.calls[-1]["iovs"] == [6, 16, 16, 16] and log == []
    client.flush()
    assert script.calls[-1]["iovs"] == [14, 16]  # 34 sent: 14 left of the third buffer
    assert len(script.calls) == 3
    assert bytes(script.wire) == payload
    assert log == [0]  # 10 + 24 + 30 = 64: complete on the last send, not before


def test_more_than_64_iovecs_go_in_batches_of_64(pair):
    client, _ = pair
    script = client._sys = Scripted()
    log = []
    for i in range(63):
        client.writev_async(Request([data(3, i)], cb=lambda r, st, i=i: log.append(i)))
    assert script.calls == []  # 63 queued iovecs: not yet
    client.writev_async(Request([data(3, 63), data(2, 64)], cb=lambda r, st: log.append(63)))
    assert [c["iovs"].__len__() for c in script.calls] == [64, 1]  # flushed at once
    for i in range(64, 100):
        client.writev_async(Request([data(5, i)], cb=lambda r, st, i=i: log.append(i)))
    client.flush()
    assert log == list(range(100))
    assert all(len(c["iovs"]) <= 64 for c in script.calls)
    expected = b"".join(data(3, i) for i in range(63)) + data(3, 63) + data(2, 64) + \
        b"".join(data(5, i) for i in range(64, 100))
    assert bytes(script.wire) == expected


def test_batch_boundary_inside_a_request_with_short_writes(pair):
    client, _ = pair
    script = client._sys = Scripted(sends=[100, 7, 1000, 3])
    reqs = [Request([data(10, k * 50 + j) for j in range(50)]) for k in range(3)]
    for r in reqs:
        client.writev_async(r)
    while client._queued:
        client.flush()
    assert bytes(script.wire) == b"".join(b"".join(bytes(b) for b in r.bufs) for r in reqs)
    assert all(len(c["iovs"]) <= 64 for c in script.calls)


def test_zero_copy_threshold_copies_the_small_last_chunk_and_waits_for_the_others(pair):
    client, _ = pair
    force_zerocopy(client)
    client._impl_opts = client._impl_opts.replace(zerocopy_threshold=100)
    script = client._sys = Scripted(sends=[100, 100])
    log = []
    client.writev_async(Request([data(250)], cb=lambda r, st: log.append(st)))
    client.flush()
    client.flush()
    client.flush()
    flags = [bool(c["flags"] & MSG_ZEROCOPY) for c in script.calls]
    assert [c["total"] for c in script.calls] == [250, 150, 50]
    assert flags == [True, True, False]
    assert client._queued == type(client._queued)() and log == []  # fully sent, not released (SPDK #3610)
    script.errqueue.append([zc_cmsg(0, 0)])
    client.flush()
    assert log == []
    script.errqueue.append([zc_cmsg(1, 1)])
    client.flush()
    assert log == [0]
    assert client.stats.zerocopy_sends == 2


def test_enobufs_falls_back_to_a_copy_for_that_batch(pair):
    client, _ = pair
    force_zerocopy(client)
    script = client._sys = Scripted(sends=[OSError(errno.ENOBUFS, "optmem")])
    log = []
    client.writev_async(Request([data(4000)], cb=lambda r, st: log.append(st)))
    client.flush()
    assert [bool(c["flags"] & MSG_ZEROCOPY) for c in script.calls] == [True, False]
    assert log == [0] and bytes(script.wire) == data(4000)
    assert client.stats.zerocopy_fallbacks == 1 and client.stats.zerocopy_sends == 0
    assert client._zc.next_index == 0  # the refused send took no counter value


def test_eagain_leaves_everything_queued(pair):
    client, _ = pair
    script = client._sys = Scripted(sends=[BlockingIOError(errno.EAGAIN, "full"), InterruptedError(), 5])
    log = []
    client.writev_async(Request([b"0123456789"], cb=lambda r, st: log.append(st)))
    client.flush()
    assert log == [] and len(client._queued) == 1 and script.wire == b""
    client.flush()  # EINTR is retried, then 5 bytes
    assert script.wire == b"01234" and log == []
    client.flush()
    assert log == [0] and script.wire == b"0123456789"


def test_send_error_completes_queued_requests_with_the_errno_and_does_not_raise(pair):
    client, _ = pair
    client._sys = Scripted(sends=[4, BrokenPipeError(errno.EPIPE, "gone")])
    log = []
    for i in range(3):
        client.writev_async(Request([data(8, i)], cb=lambda r, st, i=i: log.append((i, st))))
    client.flush()
    assert log == []
    client.flush()
    assert log == [(0, errno.EPIPE), (1, errno.EPIPE), (2, errno.EPIPE)]


def test_writev_returns_none_and_writes_nothing_while_the_queue_cannot_drain(pair):
    client, _ = pair
    script = client._sys = Scripted(sends=[3, BlockingIOError()])
    client.writev_async(Request([b"queued"]))
    assert client.writev([b"direct"]) is None
    assert script.wire == b"que"
    assert client.writev([b"direct"]) is None  # EAGAIN: still nothing direct
    assert script.wire == b"que"
    assert client.writev([b"direct"]) == 6  # queue drains, then the direct write
    assert script.wire == b"queueddirect"


def test_reads_of_a_kib_or_more_skip_an_empty_pipe_and_smaller_ones_fill_it(pair):
    """SPDK's rule: the pipe batches small reads; a large read would only gain a copy from it."""
    client, server = pair
    seen = []

    class Recording(Scripted):
        def readv(self, fd, bufs):
            seen.append([len(b) for b in bufs])
            return super().readv(fd, bufs)

        def recv_into(self, s, buf):
            seen.append([len(buf)])
            return super().recv_into(s, buf)

    server._sys = Recording()
    client.writev([b"x" * 3000])
    big = bytearray(MIN_SOCK_PIPE_SIZE)
    while server.recv_into(big) is None:
        pass
    assert seen[-1] == [MIN_SOCK_PIPE_SIZE]                   # the caller's buffer itself
    small = bytearray(MIN_SOCK_PIPE_SIZE - 1)
    assert server.recv_into(small) == len(small)              # the rest, through the pipe ...
    assert sum(seen[-1]) > MIN_SOCK_PIPE_SIZE                 # ... which read what the kernel had
    calls = len(seen)
    assert server.recv_into(bytearray(MIN_SOCK_PIPE_SIZE)) == 3000 - 2 * MIN_SOCK_PIPE_SIZE + 1
    assert len(seen) == calls                                 # a large read drains the pipe first, no syscall
    assert server.recv_into(bytearray(8)) is None
    assert len(seen) == calls + 1                             # then the kernel: EAGAIN


def test_a_request_of_many_iovecs_resumes_at_its_send_cursor(pair):
    """Every gather of a partly sent request starts at its first unsent buffer (not a walk from its
    first one), with the right offset into it, through buffers of every size (empty ones too)."""
    import random

    rng = random.Random(7)
    client, _ = pair
    sizes = [rng.choice([0, 1, 5, 64, 700, 4096]) for _ in range(1500)]
    bufs = [data(n, i) for i, n in enumerate(sizes)]
    payload = b"".join(bufs)
    script = client._sys = Scripted(sends=[rng.randint(1, 20000) for _ in range(len(payload) // 1000 + 10)])
    before: list[int] = []  # bytes on the wire before each sendmsg
    sendmsg = script.sendmsg

    def spy(*args):
        before.append(len(script.wire))
        return sendmsg(*args)

    script.sendmsg = spy
    log: list[int] = []
    req = Request(bufs, cb=lambda r, st: log.append(st))
    client.writev_async(req)
    cursors = []
    while not log:
        client.flush()
        cursors.append((len(script.wire), req._iov_idx, req._iov_off))
    assert log == [0] and bytes(script.wire) == payload

    def cursor(sent: int) -> tuple[int, int]:
        idx = acc = 0
        while idx < len(sizes) and acc + sizes[idx] <= sent:
            acc += sizes[idx]
            idx += 1
        return idx, sent - acc

    for call, sent in zip(script.calls, before):
        idx, off = cursor(sent)
        assert call["iovs"] == ([sizes[idx] - off] + sizes[idx + 1:idx + 64])[:64], sent
    for sent, idx, off in cursors[:-1]:  # while it is partly sent, the request's cursor is where its bytes end
        assert (idx, off) == cursor(sent)
