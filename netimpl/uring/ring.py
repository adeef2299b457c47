"""A typed wrapper over the io_uring core: ``ring.c`` (cffi) and ``bridge.c`` (C API).

The compiled modules ``_ring`` and ``_bridge`` are private; everything else
uses :class:`Ring` and :class:`BufRing`. C structures cross to ``_bridge`` as
their addresses, taken from cffi once per structure (:func:`address`);
Python objects reach C only as ``_bridge``'s declared arguments.
Errors cross the boundary in one place, :func:`check`, which turns the C
core's ``-errno`` into ``OSError`` with a note on when the kernel says it.
"""

from __future__ import annotations

import errno
import os
from typing import Any

try:
    from . import _bridge  # type: ignore[attr-defined]
    from ._ring import ffi, lib
except ImportError as exc:  # not built: the backend's probe reports this
    ffi = lib = _bridge = None
    IMPORT_ERROR: str = str(exc)
else:
    IMPORT_ERROR = ""

__all__ = ["ERRNO_NOTES", "IMPORT_ERROR", "REAP_BATCH", "UD_MAX", "BufRing", "Ring", "address", "check", "ffi", "lib"]

#: When io_uring_setup / io_uring_enter / IORING_REGISTER_PROBE return each errno.
ERRNO_NOTES: dict[int, str] = {
    errno.EAGAIN: "the kernel is out of resources for this request; retry after reaping",
    errno.EBADF: "the ring fd, or the fd of the operation, is not open",
    errno.EBUSY: "the CQ overflowed and the kernel holds completions back until they are reaped",
    errno.EEXIST: "IORING_SETUP_SINGLE_ISSUER: this ring belongs to the thread that created it",
    errno.EFAULT: "a buffer or ring address is not mapped",
    errno.EINTR: "a signal interrupted the wait",
    errno.EINVAL: "a flag or size this kernel does not accept",
    errno.ENOBUFS: "a multishot receive found its provided-buffer ring empty",
    errno.ENOMEM: "the kernel could not allocate ring memory (RLIMIT_MEMLOCK on old kernels)",
    errno.ENOSYS: "the kernel has no io_uring",
    errno.EOPNOTSUPP: "the operation is not supported on this fd or by this kernel",
    errno.EPERM: "io_uring is disabled (sysctl kernel.io_uring_disabled) or forbidden by seccomp",
    errno.ETIME: "the wait timed out",
}

#: The largest user_data an operation may carry: CQEs with bit 63 set belong to multishot
#: receives (their ``struct ni_rxq``'s address), which ``_bridge.reap`` files in C.
UD_MAX = (1 << 63) - 1

#: CQEs copied out of the ring per reap call.
REAP_BATCH = 256


def address(cdata: Any) -> int:
    """The address of a C structure, as ``_bridge`` takes it."""
    return int(ffi.cast("uintptr_t", cdata))


def check(rc: int, what: str) -> int:
    """``rc`` if it is not negative, else raise ``OSError(-rc)`` naming the call."""
    if rc >= 0:
        return rc
    code = -rc
    note = ERRNO_NOTES.get(code, "")
    raise OSError(code, f"{what}: {os.strerror(code)}" + (f" ({note})" if note else ""))


class Ring:
    """One io_uring instance: SQ/CQ mapped, SQEs prepared by the C core.

    ``flags`` are tried as given, then without DEFER_TASKRUN and
    SINGLE_ISSUER (older kernels refuse them with EINVAL).
    """

    def __init__(self, entries: int = 256, cq_entries: int = 4096, flags: int | None = None) -> None:
        if lib is None:
            raise OSError(errno.ENOSYS, f"the io_uring core is not built: {IMPORT_ERROR}")
        if flags is None:
            flags = lib.IORING_SETUP_SINGLE_ISSUER | lib.IORING_SETUP_DEFER_TASKRUN | lib.IORING_SETUP_SUBMIT_ALL
        out = ffi.new("struct ni_ring **")
        rc = lib.ni_ring_create(out, entries, cq_entries, flags)
        if rc == -errno.EINVAL and flags & (lib.IORING_SETUP_SINGLE_ISSUER | lib.IORING_SETUP_DEFER_TASKRUN):
            flags &= ~(lib.IORING_SETUP_SINGLE_ISSUER | lib.IORING_SETUP_DEFER_TASKRUN)
            rc = lib.ni_ring_create(out, entries, cq_entries, flags)
        check(rc, "io_uring_setup")
        self._r = out[0]
        self.addr = address(self._r)
        self.fd: int = lib.ni_ring_fd(self._r)
        self.setup_flags: int = lib.ni_ring_setup_flags(self._r)
        self.features: int = lib.ni_ring_features(self._r)
        self.sq_entries: int = lib.ni_ring_sq_entries(self._r)
        self.cq_entries: int = lib.ni_ring_cq_entries(self._r)

    def __repr__(self) -> str:
        state = "closed" if self._r is None else f"fd={self.fd}"
        return f"<Ring {state} sq={self.sq_entries} cq={self.cq_entries} flags={self.setup_flags:#x}>"

    def __enter__(self) -> "Ring":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Unmap and close; the kernel cancels what is still in flight."""
        if self._r is not None:
            lib.ni_ring_destroy(self._r)
            self._r = None
            self.addr = 0

    @property
    def closed(self) -> bool:
        return self._r is None

    # -- submission --------------------------------------------------------

    def sq_space(self) -> int:
        return lib.ni_sq_space(self._r)

    def sq_pending(self) -> int:
        return lib.ni_sq_pending(self._r)

    def _prep(self, fn, *args) -> None:
        if type(args[-1]) is int and args[-1] > UD_MAX:  # the user_data, for all but sends and receives
            raise ValueError(f"user_data {args[-1]:#x} is above {UD_MAX:#x}: bit 63 marks multishot receives")
        rc = fn(self._r, *args)
        if rc == -errno.EBUSY:
            # SQ full: hand what is there to the kernel, then there is room.
            self.submit()
            rc = fn(self._r, *args)
        check(rc, fn.__name__)

    def prep_nop(self, user_data: int) -> None:
        self._prep(lib.ni_prep_nop, user_data)

    def prep_poll_add(self, fd: int, mask: int, user_data: int) -> None:
        self._prep(lib.ni_prep_poll_add, fd, mask, user_data)

    def prep_cancel_fd(self, fd: int, user_data: int) -> None:
        """Cancel every operation on ``fd`` (IORING_ASYNC_CANCEL_FD | _ALL)."""
        self._prep(lib.ni_prep_cancel_fd, fd, user_data)

    def prep_cancel(self, target: int, user_data: int) -> None:
        self._prep(lib.ni_prep_cancel, target, user_data)

    def prep_send(self, send) -> None:
        """SENDMSG or SENDMSG_ZC from a ``struct ni_send`` the caller keeps alive until its CQE."""
        self._prep(lib.ni_prep_send, send)

    def prep_send_bufs(self, send: Any, bufs: list) -> None:
        """SENDMSG(_ZC) from ``send`` (a ``struct ni_send *``, or its :func:`address`, which the
        hot path keeps) of the bytes-like objects in ``bufs`` (1..64, a list), iovecs filled in C.

        The objects must stay alive, unchanged, until the send's CQE.
        """
        send_addr = send if type(send) is int else address(send)
        rc = _bridge.prep_send(self.addr, send_addr, bufs)
        if rc == -errno.EBUSY:
            self.submit()
            rc = _bridge.prep_send(self.addr, send_addr, bufs)
        check(rc, "prep_send")

    def prep_recv_multishot(self, rxq) -> None:
        """A multishot RECV on ``rxq``'s socket into its buffer ring (``rxq.armed`` is set)."""
        self._prep(lib.ni_prep_recv_multishot, rxq)

    def prep_rxq_poll(self, rxq) -> None:
        """Direct receive's multishot poll on ``rxq``'s socket (``rxq.poll`` and ``rxq.armed`` are set);
        OSError(EALREADY), nothing prepared, while its receive or poll is armed."""
        self._prep(lib.ni_prep_rxq_poll, rxq)

    def prep_accept_multishot(self, fd: int, flags: int, user_data: int) -> None:
        """A multishot ACCEPT on listener ``fd``; accepted sockets get ``flags`` (SOCK_NONBLOCK...)."""
        self._prep(lib.ni_prep_accept_multishot, fd, flags, user_data)

    def submit(self, wait_nr: int = 0, timeout: float | None = None) -> int:
        """Submit what is prepared and, with ``wait_nr``, wait up to ``timeout`` seconds for completions.

        Returns how many SQEs the kernel took. A timeout or a signal is not an error.
        """
        ns = -1 if timeout is None else int(timeout * 1e9)
        rc = lib.ni_submit(self._r, wait_nr, ns)
        if rc < 0:
            if rc in (-errno.ETIME, -errno.EINTR):
                return 0
            if rc == -errno.EBUSY:
                return 0  # CQ overflow: the caller reaps, then submits again
            check(rc, "io_uring_enter")
        return rc

    def enter(self, wait: bool, timeout: float, out: Any) -> int:
        """Submit what is prepared; with ``wait`` and nothing in the CQ, wait up to ``timeout`` seconds
        for a completion (the GIL released); then append every completion to ``out`` (a list or a
        deque) as :meth:`reap` does. One C call: a poll's pass through the ring. Returns the SQEs the kernel took."""
        rc = _bridge.enter(self.addr, wait, int(timeout * 1e9) if wait else -1, out)
        return rc if rc >= 0 else check(rc, "io_uring_enter")

    @property
    def enters(self) -> int:
        """``io_uring_enter`` calls made on this ring."""
        return self.counters()["enters"]

    # -- completion ----------------------------------------------------------

    def cq_ready(self) -> int:
        return lib.ni_cq_ready(self._r)

    def reap(self) -> list[tuple[int, int, int]]:
        """Every completion available now as ``(user_data, res, flags)``, including overflowed ones."""
        out: list[tuple[int, int, int]] = []
        while True:
            n = _bridge.reap(self.addr, out, REAP_BATCH)
            if n == REAP_BATCH:
                continue
            if lib.ni_cq_overflowed(self._r):
                # The kernel held CQEs back; a GETEVENTS enter moves them into the CQ.
                lib.ni_submit(self._r, 0, -1)
                continue
            return out

    def counters(self) -> dict[str, int]:
        """``enters``, ``sqes`` (taken by the kernel) and ``cqes`` (reaped) since creation."""
        out = ffi.new("uint64_t[3]")
        lib.ni_ring_counters(self._r, out)
        return {"enters": out[0], "sqes": out[1], "cqes": out[2]}

    def register_eventfd(self, efd: int) -> None:
        """Have the kernel signal eventfd ``efd`` whenever this ring has completions to post."""
        check(lib.ni_register_eventfd(self._r, efd), "IORING_REGISTER_EVENTFD")

    def probe_opcode(self, opcode: int) -> bool:
        return bool(check(lib.ni_probe_opcode(self._r, opcode), "IORING_REGISTER_PROBE"))


class BufRing:
    """A provided-buffer ring registered with ``ring``: ``entries`` buffers of ``buf_size`` bytes.

    Multishot receives on ``bgid`` fill them; each socket's ``struct ni_rxq``
    holds the ones filled for it until they are read (``_bridge.rx_copy``).
    """

    def __init__(self, ring: Ring, bgid: int, entries: int, buf_size: int) -> None:
        out = ffi.new("struct ni_bufring **")
        check(lib.ni_bufring_create(ring._r, bgid, entries, buf_size, out), "IORING_REGISTER_PBUF_RING")
        self._br = out[0]
        self.ring = ring
        self.entries = entries
        self.buf_size = buf_size

    def __repr__(self) -> str:
        return f"<BufRing {self.entries}x{self.buf_size} avail={self.avail() if self._br is not None else '-'}>"

    def set_bundle(self, on: bool) -> None:
        """Receives armed from now on ask for IORING_RECVSEND_BUNDLE: one CQE may fill several buffers."""
        lib.ni_bufring_set_bundle(self._br, int(on))

    def avail(self) -> int:
        """Buffers in the ring, waiting for the kernel to fill them."""
        return lib.ni_bufring_avail(self._br)

    def lent(self) -> int:
        """Buffers lent by ``recv_next`` whose views are not yet released."""
        return lib.ni_bufring_lent(self._br)

    def working_set(self) -> dict[str, int]:
        """How many buffers the ring keeps published (``want``), how many wait as ``spare``,
        and how often ``want`` has ``grown`` and ``shrunk`` (see ``ni_bufring_settle``)."""
        out = ffi.new("uint64_t[4]")
        lib.ni_bufring_working_set(self._br, out)
        return {"want": out[0], "spare": out[1], "grown": out[2], "shrunk": out[3]}

    def rxq(self, fd: int, py_ud: int):
        """A receive queue for socket ``fd``, reported to Python's op table as ``py_ud``."""
        out = ffi.new("struct ni_rxq **")
        check(lib.ni_rxq_create(self._br, fd, py_ud, out), "allocating a receive queue")
        return out[0]

    def close(self) -> None:
        """Unregister and free; every receive on it has ended and every rxq is destroyed.

        Buffers still lent stay valid: the last of them to be released frees the memory.
        """
        if self._br is not None:
            if not self.ring.closed:
                lib.ni_bufring_unregister(self.ring._r, self._br)
            _bridge.bufring_free(address(self._br))
            self._br = None
