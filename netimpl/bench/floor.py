"""Typed wrappers over the bench's floor servers: plain C servers of the bench's protocols.

``floor.c`` is the floor of the epoll design (``c-epoll``); ``floor_uring.c``
the floor of the io_uring design (``c-uring``), making the kernel calls
netimpl's uring backend makes (multishot accept and receive into a
provided-buffer ring, sends batched into one enter) on netimpl's own ring
code, with no Python between them.
"""

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


#: The servers: the name of each as a bench contender, and the C prefix of its calls.
KINDS = {"epoll": "fl", "uring": "fu"}


def unavailable(kind: str = "epoll") -> str:
    """Why the ``kind`` floor server cannot run here, in one sentence; empty when it can."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(map(repr, KINDS))}, not {kind!r}")
    if lib is None:
        return features.not_built("the C floor server", IMPORT_ERROR)
    if kind == "uring":
        import netimpl

        uring = {i.name: i for i in netimpl.impls()}.get("uring")
        if uring is None or not uring.available:
            return f"the io_uring floor needs what backend uring needs: {uring.reason if uring else 'not registered'}"
        from ..uring import probe_accept_multishot, probe_recv_multishot

        why = probe_recv_multishot() or probe_accept_multishot()
        if why:
            return f"the io_uring floor needs multishot receive and accept: {why}"
    return ""


class FloorServer:
    """The C loop serving one listening socket until a signal arrives on ``wake_fd`` (``signal.set_wakeup_fd``).

    ``mode`` is ``"rr"`` (``a``-byte requests, ``b``-byte replies) or ``"bulk"`` (``a``-byte writes);
    ``kind`` is ``"epoll"`` (floor.c) or ``"uring"`` (floor_uring.c). The listening socket stays the
    caller's; the accepted connections are the server's until ``close``.
    """

    def __init__(self, listen_fd: int, wake_fd: int, mode: str, a: int, b: int = 0, kind: str = "epoll") -> None:
        why = unavailable(kind)
        if why:
            raise RuntimeError(why)
        if mode not in ("rr", "bulk"):
            raise ValueError(f"mode must be 'rr' or 'bulk', not {mode!r}")
        if not 0 < a < 1 << 32 or not (mode == "bulk" or 0 < b < 1 << 32):
            raise ValueError(f"sizes must be positive 32-bit counts, not {a!r} and {b!r}")
        prefix = KINDS[kind]
        out = ffi.new(f"struct {prefix} **")
        rc = getattr(lib, f"{prefix}_open")(out, listen_fd, wake_fd, mode == "bulk", a, b)
        if rc < 0:
            raise OSError(-rc, f"{kind} floor server: {os.strerror(-rc)}")
        self.kind = kind
        self._run = getattr(lib, f"{prefix}_run")
        self._close = getattr(lib, f"{prefix}_close")
        self._g = out[0]

    def run(self, timeout_ms: int) -> None:
        """Serve until a signal arrives, or until ``timeout_ms`` pass with nothing to do (-1: no limit)."""
        if self._g is None:
            raise ValueError("the floor server is closed")
        rc = self._run(self._g, timeout_ms)
        if rc < 0:
            raise OSError(-rc, f"{self.kind} floor server: {os.strerror(-rc)}")

    def close(self) -> None:
        """Close every accepted connection and free the loop; the listening socket stays open. Idempotent."""
        if self._g is not None:
            self._close(self._g)
            self._g = None
