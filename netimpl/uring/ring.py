"""A typed wrapper over the cffi-built io_uring core (``ring.c``).

The compiled module ``_ring`` is private; everything else uses :class:`Ring`.
Errors cross the boundary in one place, :func:`check`, which turns the C
core's ``-errno`` into ``OSError`` with a note on when the kernel says it.
"""

from __future__ import annotations

import errno
import os
try:
    from ._ring import ffi, lib
except ImportError as exc:  # not built: the backend's probe reports this
    ffi = lib = None
    IMPORT_ERROR: str = str(exc)
else:
    IMPORT_ERROR = ""

__all__ = ["Ring", "check", "ERRNO_NOTES", "IMPORT_ERROR", "ffi", "lib", "REAP_BATCH"]

#: When io_uring_setup / io_uring_enter / IORING_REGISTER_PROBE return each errno.
ERRNO_NOTES: dict[int, str] = {
    errno.EAGAIN: "the kernel is out of resources for this request; retry after reaping",
    errno.EBADF: "the ring fd, or the fd of the operation, is not open",
    errno.EBUSY: "the CQ overflowed and the kernel holds completions back until they are reaped",
    errno.EEXIST: "IORING_SETUP_SINGLE_ISSUER: this ring belongs to the thread that created it",
    errno.EFAULT: "a buffer or ring address is not mapped",
    errno.EINTR: "a signal interrupted the wait",
    errno.EINVAL: "a flag or size this kernel does not accept",
    errno.ENOMEM: "the kernel could not allocate ring memory (RLIMIT_MEMLOCK on old kernels)",
    errno.ENOSYS: "the kernel has no io_uring",
    errno.EOPNOTSUPP: "the operation is not supported on this fd or by this kernel",
    errno.EPERM: "io_uring is disabled (sysctl kernel.io_uring_disabled) or forbidden by seccomp",
    errno.ETIME: "the wait timed out",
}

#: CQEs copied out of the ring per reap call.
REAP_BATCH = 256


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
        self.fd: int = lib.ni_ring_fd(self._r)
        self.setup_flags: int = lib.ni_ring_setup_flags(self._r)
        self.features: int = lib.ni_ring_features(self._r)
        self.sq_entries: int = lib.ni_ring_sq_entries(self._r)
        self.cq_entries: int = lib.ni_ring_cq_entries(self._r)
        self.enters = 0

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

    @property
    def closed(self) -> bool:
        return self._r is None

    # -- submission --------------------------------------------------------

    def sq_space(self) -> int:
        return lib.ni_sq_space(self._r)

    def sq_pending(self) -> int:
        return lib.ni_sq_pending(self._r)

    def _prep(self, fn, *args) -> None:
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

    def prep_send_bufs(self, send, bufs: list) -> None:
        """SENDMSG(_ZC) of the bytes-like objects in ``bufs`` (1..64, a list), iovecs filled in C.

        The objects must stay alive, unchanged, until the send's CQE.
        """
        self._prep(lib.ni_prep_send_bufs, send, id(bufs))

    def submit(self, wait_nr: int = 0, timeout: float | None = None) -> int:
        """Submit what is prepared and, with ``wait_nr``, wait up to ``timeout`` seconds for completions.

        Returns how many SQEs the kernel took. A timeout or a signal is not an error.
        """
        ns = -1 if timeout is None else int(timeout * 1e9)
        self.enters += 1
        rc = lib.ni_submit(self._r, wait_nr, ns)
        if rc < 0:
            if rc in (-errno.ETIME, -errno.EINTR):
                return 0
            if rc == -errno.EBUSY:
                return 0  # CQ overflow: the caller reaps, then submits again
            check(rc, "io_uring_enter")
        return rc

    # -- completion ----------------------------------------------------------

    def cq_ready(self) -> int:
        return lib.ni_cq_ready(self._r)

    def reap(self) -> list[tuple[int, int, int]]:
        """Every completion available now as ``(user_data, res, flags)``, including overflowed ones."""
        out: list[tuple[int, int, int]] = []
        while True:
            n = check(lib.ni_reap_list(self._r, id(out), REAP_BATCH), "reaping the CQ")
            if n == REAP_BATCH:
                continue
            if lib.ni_cq_overflowed(self._r):
                # The kernel held CQEs back; a GETEVENTS enter moves them into the CQ.
                self.enters += 1
                lib.ni_submit(self._r, 0, -1)
                continue
            return out

    def register_eventfd(self, efd: int) -> None:
        """Have the kernel signal eventfd ``efd`` whenever this ring has completions to post."""
        check(lib.ni_register_eventfd(self._r, efd), "IORING_REGISTER_EVENTFD")

    def probe_opcode(self, opcode: int) -> bool:
        return bool(check(lib.ni_probe_opcode(self._r, opcode), "IORING_REGISTER_PROBE"))
