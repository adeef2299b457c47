"""Asynchronous write requests.

A :class:`Request` goes through SPDK's life cycle: *queued* on its socket by
``writev_async``, *pending* once every byte of it has been handed to the
kernel (or once it has been aborted), and *completed* when its callback has
run. A pending request may still have zero-copy sends that the kernel has
not released (``_zc_wait`` > 0); it completes only when that count is zero,
and requests on one socket complete in the order they were queued.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

__all__ = ["Request", "RequestCallback"]

RequestCallback = Callable[["Request", int], Any]

# Request states
FREE = 0
QUEUED = 1
PENDING = 2

_PLAIN = (bytes, bytearray)
_PLAIN_TYPES = frozenset(_PLAIN)


def _as_buffer(buf: Any, i: int) -> Any:
    """``buf`` as something ``sendmsg`` takes whose ``len`` is its byte count."""
    if type(buf) in _PLAIN:
        return buf
    try:
        mv = memoryview(buf)
    except TypeError:
        raise TypeError(f"Request bufs[{i}] is not a bytes-like object: {buf!r:.60}") from None
    if not mv.c_contiguous:
        raise ValueError(f"Request bufs[{i}] is not a contiguous buffer")
    if mv.ndim != 1 or mv.itemsize != 1:
        mv = mv.cast("B")
    return mv


class Request:
    """A vector of buffers to send asynchronously, and who to tell when it is done.

    ``cb(req, status)`` runs exactly once per queueing: ``status`` is 0 when
    every byte was handed to the kernel and the kernel no longer reads the
    buffers, else a positive errno (``ECANCELED`` on close, remove or abort;
    the socket's error such as ``ECONNRESET`` or ``EPIPE`` otherwise). The
    buffers must not change until then. A request may be queued again once
    its callback has run.
    """

    __slots__ = ("_bufs", "cb", "ctx", "_nbytes", "_offset", "_zc_wait", "_status", "_state")

    def __init__(self, bufs: Sequence[Any], cb: RequestCallback | None = None, ctx: Any = None) -> None:
        if cb is not None and not callable(cb):
            raise TypeError(f"Request cb must be callable or None, not {cb!r}")
        self.cb = cb
        self.ctx = ctx
        self._state = FREE
        self._offset = 0
        self._zc_wait = 0
        self._status = 0
        self.bufs = bufs

    @property
    def bufs(self) -> list[Any]:
        """The buffers, as given (memoryviews of other buffer types are cast to bytes)."""
        return self._bufs

    @bufs.setter
    def bufs(self, bufs: Sequence[Any]) -> None:
        if self._state != FREE:
            raise ValueError("cannot change the buffers of a request that is in flight")
        if isinstance(bufs, (bytes, bytearray, memoryview, str)):
            raise TypeError("Request bufs must be a sequence of bytes-like objects, not a single buffer")
        try:
            items = list(bufs)
        except TypeError:
            raise TypeError(f"Request bufs must be a sequence of bytes-like objects, not {bufs!r:.60}") from None
        # The common case (bytes and bytearrays only) is checked and measured at C speed.
        if not _PLAIN_TYPES.issuperset(map(type, items)):
            # Byte memoryviews (slices of a store, say) pass as they are; anything else is checked and cast.
            items = [b if type(b) in _PLAIN or (type(b) is memoryview and b.format == "B" and b.ndim == 1
                                                and b.c_contiguous) else _as_buffer(b, i) for i, b in enumerate(items)]
        self._bufs = items
        self._nbytes = sum(map(len, items))

    @property
    def nbytes(self) -> int:
        """Total length of the buffers in bytes."""
        return self._nbytes

    @property
    def in_flight(self) -> bool:
        """True from ``writev_async`` until the callback has started."""
        return self._state != FREE

    def __repr__(self) -> str:
        state = ("free", "queued", "pending")[self._state]
        return f"<Request {state} nbytes={self._nbytes} sent={self._offset} zc_wait={self._zc_wait}>"
