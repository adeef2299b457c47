"""Both Request implementations (compiled and Python) accept and refuse the same things, in the same words."""

from __future__ import annotations

import array

import pytest

from netimpl import _pycore, accel

TWINS = [pytest.param(_pycore.Request, id="python")]
if accel.native is not None:
    TWINS.append(pytest.param(accel.native.Request, id="native"))

BAD = [
    (b"abc", TypeError, "not a single buffer"),
    ("abc", TypeError, "not a single buffer"),
    (42, TypeError, "not 42"),
    ([b"a", 3], TypeError, "bufs[1] is not a bytes-like object: 3"),
    ([memoryview(bytes(8))[::2]], ValueError, "bufs[0] is not a contiguous buffer"),
]


@pytest.mark.parametrize("Request", TWINS)
@pytest.mark.parametrize("bufs,exc,words", BAD)
def test_bad_bufs_are_refused_naming_the_value(Request, bufs, exc, words):
    with pytest.raises(exc, match=words.replace("[", r"\[").replace("]", r"\]")):
        Request(bufs)


@pytest.mark.parametrize("Request", TWINS)
def test_buffers_are_measured_and_cast(Request):
    a = array.array("I", [1, 2, 3])
    req = Request((b"ab", bytearray(3), memoryview(b"wxyz")[1:], a), ctx="c")
    assert req.nbytes == 2 + 3 + 3 + 12 and req.ctx == "c" and req.cb is None and not req.in_flight
    assert memoryview(req.bufs[3]).format == "B" and len(req.bufs[3]) == 12
    assert repr(req) == "<Request free nbytes=20 sent=0 zc_wait=0>"
    with pytest.raises(TypeError, match="cb must be callable or None, not 5"):
        Request([b"x"], cb=5)


@pytest.mark.parametrize("Request", TWINS)
def test_generators_and_tuples_are_sequences(Request):
    assert Request(b"x" for _ in range(3)).nbytes == 3
    assert Request(()).nbytes == 0
