"""Typed wrapper over the C load generator (``loadgen.c``)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from .. import features

try:
    from ._loadgen import ffi, lib
except ImportError as exc:  # pragma: no cover - reported by the bench command
    ffi = lib = None
    IMPORT_ERROR = str(exc)
else:
    IMPORT_ERROR = ""

LATENCY_CAP = 1 << 20


def unavailable_reason() -> str:
    """'' if the load generator is built, else why not and what to install."""
    return features.not_built("the C load generator", IMPORT_ERROR) if lib is None else ""


@dataclass
class Window:
    responses: int
    bytes_in: int
    bytes_out: int
    seconds: float
    latencies_ns: list[int]


def _check(rc: int, what: str) -> None:
    if rc < 0:
        raise OSError(-rc, f"load generator {what}: {os.strerror(-rc)}")


class LoadGen:
    """Connections to a server under test, driven in measured windows."""

    def __init__(self, host: str, port: int, *, conns: int = 1, depth: int = 1, active: int | None = None,
                 req_size: int = 64, resp_size: int = 64, sink: bool = False) -> None:
        if lib is None:
            raise RuntimeError(unavailable_reason())
        out = ffi.new("struct lg **")
        if sink:
            _check(lib.lg_open_sink(out, host.encode(), port), "connect")
        else:
            _check(lib.lg_open(out, host.encode(), port, conns, depth, active or conns, req_size, resp_size), "connect")
        self._g = out[0]
        self._lat = ffi.new("uint32_t[]", LATENCY_CAP)
        self._st = ffi.new("struct lg_stats *")

    def run(self, seconds: float, latencies: bool = False) -> Window:
        _check(lib.lg_run(self._g, seconds, self._lat, LATENCY_CAP if latencies else 0, self._st), "run")
        st = self._st
        lats = list(ffi.unpack(self._lat, st.latencies)) if latencies else []
        return Window(st.responses, st.bytes_in, st.bytes_out, st.seconds, lats)

    def close(self) -> None:
        if self._g is not None:
            lib.lg_close(self._g)
            self._g = None

    def __enter__(self) -> "LoadGen":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
