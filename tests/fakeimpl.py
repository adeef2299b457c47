"""An in-memory backend for testing the generic layer without a kernel.

``FakeSock._flush`` hands the kernel at most ``budget`` bytes per call (None:
all), optionally "by zero-copy", recording each send; ``release(i)`` plays
the kernel releasing zero-copy send ``i``.
"""

from __future__ import annotations

from netimpl.impl import GroupImpl, NetImpl
from netimpl.options import ImplOpts, SockOpts
from netimpl.sock import Sock


class FakeImpl(NetImpl):
    name = "fake"

    def listen(self, host, port, opts):
        raise NotImplementedError

    def connect(self, host, port, opts):
        raise NotImplementedError

    def group_impl_create(self) -> GroupImpl:
        raise NotImplementedError


class FakeSock(Sock):
    def __init__(self, zerocopy: bool = False) -> None:
        super().__init__(FakeImpl(), 1000, ImplOpts(), SockOpts())
        self.budget: int | None = None
        self.zc = zerocopy
        self.sent = bytearray()
        self.zc_sends: list[list] = []
        self.flush_depth = 0
        self.max_flush_depth = 0
        self.closes = 0
        self.fail_with: int | None = None

    @property
    def zerocopy(self) -> bool:
        return self.zc

    def _flush(self) -> None:
        self.flush_depth += 1
        self.max_flush_depth = max(self.max_flush_depth, self.flush_depth)
        try:
            if self.fail_with is not None:
                self._fail_queued(self.fail_with)
                return
            while self._queued and self.budget != 0:
                want = sum(r._nbytes - r._offset for r in self._queued)
                n = want if self.budget is None else min(want, self.budget)
                if self.budget is not None:
                    self.budget -= n
                self._record(n)
                touched = self._requests_sent(n, self.zc)
                if self.zc:
                    self.zc_sends.append(touched)
            self._complete_pending()
        finally:
            self.flush_depth -= 1

    def _record(self, n: int) -> None:
        for req in self._queued:
            data = b"".join(bytes(b) for b in req._bufs)[req._offset:]
            take = min(n, len(data))
            self.sent += data[:take]
            n -= take
            if not n:
                break

    def release(self, index: int) -> None:
        for req in self.zc_sends[index]:
            self._zc_released(req)
        self._complete_pending()

    def _close(self) -> None:
        self.closes += 1
