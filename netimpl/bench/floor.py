"""Typed wrapper over the bench's floor server (``floor.c``): a plain C epoll server of the bench's protocols."""

from __future__ import annotations

import os

from .. import features

try:
    from ._floor import ffi, lib
except ImportError as exc:  # pragma: no cover - reported by the bench command
    ffi = lib = None
    IMPORT_ERROR = str(exc)
else:
    IMPORT_ERROR = ""


def unavailable() -> str:
    """Why the floor cannot run here, in one sentence; empty when it can."""
    if lib is None:
        return features.not_built("the C floor server", IMPORT_ERROR)
    return ""


class FloorServer:
    """The C loop serving one listening socket until a signal arrives on ``wake_fd`` (``signal.set_wakeup_fd``).

    ``mode`` is ``"rr"`` (``a``-byte requests, ``b``-byte replies) or ``"bulk"`` (``a``-byte writes).
    The listening socket stays the caller's; the accepted connections are the server's until ``close``.
    """

    def __init__(self, listen_fd: int, wake_fd: int, mode: str, a: int, b: int = 0) -> None:
        if lib is None:
            raise RuntimeError(unavailable())
        if mode not in ("rr", "bulk"):
            raise ValueError(f"mode must be 'rr' or 'bulk', not {mode!r}")
        if not 0 < a < 1 << 32 or not (mode == "bulk" or 0 < b < 1 << 32):
            raise ValueError(f"sizes must be positive 32-bit counts, not {a!r} and {b!r}")
        out = ffi.new("struct fl **")
        rc = lib.fl_open(out, listen_fd, wake_fd, mode == "bulk", a, b)
        if rc < 0:
            raise OSError(-rc, f"floor server: {os.strerror(-rc)}")
        self._g = out[0]

    def run(self, timeout_ms: int) -> None:
        """Serve until a signal arrives, or until ``timeout_ms`` pass with nothing to do (-1: no limit)."""
        if self._g is None:
            raise ValueError("the floor server is closed")
        rc = lib.fl_run(self._g, timeout_ms)
        if rc < 0:
            raise OSError(-rc, f"floor server: {os.strerror(-rc)}")

    def close(self) -> None:
        """Close every accepted connection and free the loop; the listening socket stays open. Idempotent."""
        if self._g is not None:
            lib.fl_close(self._g)
            self._g = None
