"""Backend ``uring``: the sock interface over io_uring, with our own ring in C (cffi).

Ranks above posix where the kernel has what it needs, which a probe finds
out at first use: io_uring_setup permitted (sysctl kernel.io_uring_disabled,
seccomp), the C core built, and the opcodes POLL_ADD, SENDMSG and
ASYNC_CANCEL (by fd); SENDMSG_ZC is used for zero-copy where present.

Receive readiness is a one-shot POLL_ADD followed by ``readv`` into the
shared recv pipe, rather than multishot receive into a provided-buffer ring:
the pipe already turns many small reads into one, data lands in memory the
application reads directly (no buffer-ring copy-out and recycle step), and
the same read path serves both backends, so the generic layer holds it
once.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import features
from ..options import ImplOpts, describe_fields, documented
from ..posix import PosixImpl
from . import ring as _ring
from .sock import UringSock

__all__ = ["UringImpl", "UringOpts", "UringSock", "PRIORITY"]

#: Above posix, which is 0.
PRIORITY = 10


@describe_fields
@dataclass
class UringOpts(ImplOpts):
    """uring's options: those of every backend, plus the ring's sizes."""

    ring_entries: int = documented("SQ entries of each group's ring (rounded up to a power of two by the kernel).",
                                   default=256)
    cq_entries: int = documented("CQ entries: room for a poll, a send and its notification per socket, with "
                                 "NODROP as the backstop.", default=8192)

    _ranges = {**ImplOpts._ranges, "ring_entries": (1, 32768), "cq_entries": (2, 65536)}


_REQUIRED = ("NOP", "POLL_ADD", "SENDMSG", "ASYNC_CANCEL")


class UringImpl(PosixImpl):
    """The uring net impl: socket setup as posix, group I/O through io_uring."""

    name = "uring"
    opts_type = UringOpts
    sock_type = UringSock

    def __init__(self) -> None:
        super().__init__()
        self.zerocopy_opcode = False

    def probe(self) -> str:
        reason = features.io_uring_reason()
        if reason:
            return reason
        if _ring.lib is None:
            return features.not_built("the io_uring C core", _ring.IMPORT_ERROR)
        lib = _ring.lib
        try:
            r = _ring.Ring(8, 16)
        except OSError as exc:
            return f"io_uring_setup failed: {exc}"
        with r:
            need = lib.IORING_FEAT_NODROP | lib.IORING_FEAT_EXT_ARG
            if r.features & need != need:
                return "the kernel's io_uring lacks IORING_FEAT_NODROP/EXT_ARG (needs Linux 5.11 or later)"
            for name in _REQUIRED:
                if not r.probe_opcode(getattr(lib, f"IORING_OP_{name}")):
                    return f"the kernel's io_uring lacks IORING_OP_{name}"
            # Cancel-by-fd (Linux 6.0): with CANCEL_ALL it answers how many it cancelled (0 here);
            # a kernel without it refuses the flags with EINVAL.
            r.prep_cancel_fd(0, 1)
            r.submit(1, 1.0)
            res = [c[1] for c in r.reap()]
            if not res or res[0] < 0:
                return "the kernel's io_uring cannot cancel by fd (IORING_ASYNC_CANCEL_FD needs Linux 6.0)"
            self.zerocopy_opcode = r.probe_opcode(lib.IORING_OP_SENDMSG_ZC)
        return ""

    def group_impl_create(self):
        from .group import UringGroupImpl

        return UringGroupImpl(self)
