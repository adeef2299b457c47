"""The recv pipe: SPDK's pipe_ut scenarios, then a state machine against a bytes model."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from netimpl import Pipe


def lens(views):
    return [len(v) for v in views]


def put(pipe: Pipe, data: bytes) -> None:
    views = pipe.writer_get_buffer(len(data))
    assert sum(lens(views)) == len(data)
    off = 0
    for v in views:
        v[:] = data[off:off + len(v)]
        off += len(v)
    pipe.writer_advance(len(data))


def take(pipe: Pipe, n: int) -> bytes:
    views = pipe.reader_get_buffer(n)
    data = b"".join(bytes(v) for v in views)
    pipe.reader_advance(len(data))
    return data


def test_create_rejects_bad_capacity():
    with pytest.raises(ValueError, match="-1"):
        Pipe(-1)
    with pytest.raises(ValueError):
        Pipe(0)
    with pytest.raises(TypeError, match="'10'"):
        Pipe("10")  # type: ignore[arg-type]


def test_write_get_buffer():
    pipe = Pipe(10)
    # Whole capacity is usable, in one piece while empty.
    assert lens(pipe.writer_get_buffer(10)) == [10]
    assert lens(pipe.writer_get_buffer(5)) == [5]
    assert lens(pipe.writer_get_buffer(20)) == [10]
    # Write pointer mid-buffer, read pointer at 0: one piece to the end.
    put(pipe, b"a" * 4)
    assert lens(pipe.writer_get_buffer(10)) == [6]
    # Read some: the free space wraps into two pieces.
    take(pipe, 3)
    assert lens(pipe.writer_get_buffer(10)) == [6, 3]
    assert lens(pipe.writer_get_buffer(7)) == [6, 1]
    # Full: nothing.
    put(pipe, b"b" * 9)
    assert pipe.free_space() == 0
    assert pipe.writer_get_buffer(1) == []
    # Write pointer behind read pointer: one piece up to it.
    take(pipe, 5)
    assert lens(pipe.writer_get_buffer(10)) == [5]


def test_write_advance():
    pipe = Pipe(10)
    pipe.writer_advance(5)
    assert pipe.bytes_available() == 5
    pipe.writer_advance(5)
    assert pipe.bytes_available() == 10 and pipe.free_space() == 0
    # Past what is free: ValueError, nothing changes.
    with pytest.raises(ValueError, match="writer_advance\\(1\\)"):
        pipe.writer_advance(1)
    assert pipe.bytes_available() == 10
    pipe.reader_advance(4)
    with pytest.raises(ValueError):
        pipe.writer_advance(5)
    assert pipe.free_space() == 4
    pipe.writer_advance(4)
    assert pipe.free_space() == 0


def test_zero_advance_is_a_no_op():
    pipe = Pipe(8)
    pipe.writer_advance(0)
    assert pipe.bytes_available() == 0 and pipe.free_space() == 8
    pipe.reader_advance(0)
    put(pipe, b"12345678")
    pipe.writer_advance(0)
    pipe.reader_advance(0)
    assert take(pipe, 8) == b"12345678"


def test_negative_advance_is_rejected():
    pipe = Pipe(8)
    with pytest.raises(ValueError):
        pipe.writer_advance(-1)
    with pytest.raises(ValueError):
        pipe.reader_advance(-1)


def test_read_get_buffer():
    pipe = Pipe(10)
    assert pipe.reader_get_buffer(5) == []
    put(pipe, b"0123456")
    assert lens(pipe.reader_get_buffer(5)) == [5]
    assert lens(pipe.reader_get_buffer(20)) == [7]
    take(pipe, 5)
    put(pipe, b"789AB")  # wraps: write index 2
    assert lens(pipe.reader_get_buffer(20)) == [5, 2]
    assert b"".join(bytes(v) for v in pipe.reader_get_buffer(20)) == b"56789AB"
    put(pipe, b"CDE")  # full, indices equal
    assert pipe.bytes_available() == 10
    assert lens(pipe.reader_get_buffer(20)) == [5, 5]


def test_read_advance_and_reset_when_emptied():
    pipe = Pipe(10)
    put(pipe, b"abcdef")
    with pytest.raises(ValueError, match="reader_advance\\(7\\)"):
        pipe.reader_advance(7)
    assert pipe.bytes_available() == 6
    pipe.reader_advance(6)
    # Emptied: the next write gets the whole buffer in one piece.
    assert lens(pipe.writer_get_buffer(10)) == [10]


def test_data_survives_wraparound():
    pipe = Pipe(7)
    out = bytearray()
    src = bytes(range(256)) * 3
    i = 0
    while i < len(src):
        k = min(5, len(src) - i, pipe.free_space())
        put(pipe, src[i:i + k])
        i += k
        out += take(pipe, 3)
    out += take(pipe, 100)
    assert bytes(out) == src


def test_resized_keeps_unread_bytes_and_refuses_to_drop_any():
    pipe = Pipe(8)
    put(pipe, b"abcdef")
    take(pipe, 4)
    put(pipe, b"ghij")  # wrapped
    with pytest.raises(ValueError, match="6 bytes are buffered"):
        pipe.resized(5)
    assert take(pipe.resized(6), 100) == b"efghij"
    big = pipe.resized(64)
    assert big.capacity == 64 and take(big, 100) == b"efghij"


class PipeModel(RuleBasedStateMachine):
    """Random writes, reads and bad advances; the pipe must behave as a bytes FIFO of fixed capacity."""

    def __init__(self) -> None:
        super().__init__()
        self.cap = 13
        self.pipe = Pipe(self.cap)
        self.model = bytearray()
        self.counter = 0

    @rule(n=st.integers(0, 20))
    def write(self, n):
        views = self.pipe.writer_get_buffer(n)
        assert len(views) <= 2
        got = sum(lens(views))
        assert got == min(n, self.cap - len(self.model))
        data = bytes((self.counter + k) % 256 for k in range(got))
        self.counter += got
        off = 0
        for v in views:
            v[:] = data[off:off + len(v)]
            off += len(v)
        self.pipe.writer_advance(got)
        self.model += data

    @rule(n=st.integers(0, 20))
    def read(self, n):
        views = self.pipe.reader_get_buffer(n)
        assert len(views) <= 2
        data = b"".join(bytes(v) for v in views)
        assert data == bytes(self.model[:min(n, len(self.model))])
        self.pipe.reader_advance(len(data))
        del self.model[:len(data)]

    @rule(n=st.integers(1, 20))
    def read_into(self, n):
        buf = bytearray(n)
        got = self.pipe.read_into(memoryview(buf))
        assert bytes(buf[:got]) == bytes(self.model[:got])
        assert got == min(n, len(self.model))
        del self.model[:got]

    @rule(extra=st.integers(1, 5))
    def over_advance_changes_nothing(self, extra):
        before = (self.pipe.bytes_available(), self.pipe.free_space())
        with pytest.raises(ValueError):
            self.pipe.writer_advance(self.pipe.free_space() + extra)
        with pytest.raises(ValueError):
            self.pipe.reader_advance(self.pipe.bytes_available() + extra)
        assert (self.pipe.bytes_available(), self.pipe.free_space()) == before

    @precondition(lambda self: len(self.model) > 0)
    @rule(cap=st.integers(1, 30))
    def resize(self, cap):
        if cap < len(self.model):
            with pytest.raises(ValueError):
                self.pipe.resized(cap)
        else:
            self.pipe = self.pipe.resized(cap)
            self.cap = cap

    @invariant()
    def counts_match(self):
        assert self.pipe.bytes_available() == len(self.model)
        assert self.pipe.free_space() == self.cap - len(self.model)


TestPipeModel = PipeModel.TestCase
TestPipeModel.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
