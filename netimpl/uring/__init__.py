"""Backend ``uring``: the sock interface over io_uring, with our own ring in C (cffi).

Ranks above posix where the kernel has what it needs, which a probe finds
out at first use: io_uring_setup permitted (sysctl kernel.io_uring_disabled,
seccomp), the C core built, and the opcodes POLL_ADD, SENDMSG and
ASYNC_CANCEL (by fd); SENDMSG_ZC is used for zero-copy where present.

Beyond those, each feature is probed on its own and used where present,
falling back feature by feature (``features``, shown by ``python -m netimpl
info``):

* ``recv_multishot``: a multishot RECV into a provided-buffer ring per group
  (IORING_REGISTER_PBUF_RING and IORING_RECV_MULTISHOT, Linux 6.0), the
  buffers serving as the sockets' recv pipes; without it, a one-shot
  POLL_ADD per readiness event and ``recv(2)``.
* ``accept_multishot``: IORING_ACCEPT_MULTISHOT (5.19) for listeners;
  without it, a POLL_ADD and ``accept(2)``.
* ``send_zc``: SENDMSG_ZC (6.1) for zero-copy sockets; without it they send
  by copy through the ring.
* ``bundle``: IORING_RECVSEND_BUNDLE (6.10) on those receives, one CQE
  for as many buffers as the data fills; without it, one CQE per buffer.

Each probe is a real round trip on a loopback socket pair, not a version
check: a kernel can have the opcode and still refuse the flag.
"""

from __future__ import annotations

import errno
import os
import socket
from dataclasses import dataclass

from .. import features
from ..errors import logger
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

    multishot: bool = documented("Multishot receive and accept where the kernel has them (False: a poll per "
                                 "readiness event and recv(2)/accept(2)).", default=True)
    pbuf_entries: int = documented("Buffers in each group's provided-buffer ring (a power of two), shared by its "
                                   "sockets' multishot receives. The ring keeps only as many published as its "
                                   "receives have lately needed (64 at the least), the rest spare, so the "
                                   "kernel fills buffers still in cache.", default=512)
    pbuf_size: int = documented("Bytes per provided buffer: one multishot receive CQE carries at most this many.",
                                default=16384)
    direct_recv: bool = documented("Let a socket whose reads return a provided buffer's worth or more on "
                                   "average (bulk payloads into large buffers) switch to a multishot "
                                   "readiness poll and recv(2) straight into the caller's buffer, and back "
                                   "once they average under a quarter of one: one copy where the buffers "
                                   "cost two (False: always the buffers).", default=True)

    _ranges = {**ImplOpts._ranges, "ring_entries": (1, 32768), "cq_entries": (2, 65536),
               "pbuf_entries": (1, 32768), "pbuf_size": (64, 1 << 24)}

    def __post_init__(self) -> None:
        super().__post_init__()
        n = self.pbuf_entries
        if n & (n - 1):
            raise ValueError(f"UringOpts.pbuf_entries must be a power of two, not {n!r}")


_REQUIRED = ("NOP", "POLL_ADD", "SENDMSG", "ASYNC_CANCEL")


class UringImpl(PosixImpl):
    """The uring net impl: socket setup as posix, group I/O through io_uring."""

    name = "uring"
    opts_type = UringOpts
    sock_type = UringSock

    def __init__(self) -> None:
        super().__init__()
        self.zerocopy_opcode = False
        #: feature -> '' when in use, else why not (filled by the probe)
        self.features: dict[str, str] = {}

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
            bundle = bool(r.features & lib.IORING_FEAT_RECVSEND_BUNDLE)
        feats = {
            "recv_multishot": probe_recv_multishot(),
            "accept_multishot": probe_accept_multishot(),
            "send_zc": "" if self.zerocopy_opcode else "the kernel's io_uring lacks IORING_OP_SENDMSG_ZC (Linux 6.1)",
            "bundle": (probe_recv_multishot(bundle=True) if bundle
                       else "the kernel lacks IORING_FEAT_RECVSEND_BUNDLE (Linux 6.10)"),
        }
        for name in _switched_off(feats):
            feats[name] = f"switched off ({DISABLE_ENV}={os.environ[DISABLE_ENV]})"
        self.zerocopy_opcode = not feats["send_zc"]
        self.features = feats
        return ""

    def group_impl_create(self):
        from .group import UringGroupImpl

        return UringGroupImpl(self)


#: Comma-separated uring features to leave unused even where the kernel has them
#: (``recv_multishot,accept_multishot``: the fallback paths, as on an older kernel).
DISABLE_ENV = "NETIMPL_URING_DISABLE"


def _switched_off(feats: dict[str, str]) -> list[str]:
    names = [n.strip() for n in os.environ.get(DISABLE_ENV, "").split(",") if n.strip()]
    unknown = [n for n in names if n not in feats]
    if unknown:
        logger.warning("%s names no uring feature: %s (features: %s)", DISABLE_ENV, ", ".join(unknown),
                       ", ".join(feats))
    return [n for n in names if n in feats]


def _round_trip(arm, act) -> tuple[int, int, int] | str:
    """Arm an operation on a fresh ring, let the peer act, and return the first CQE (or why none)."""
    try:
        r = _ring.Ring(8, 64)
    except OSError as exc:
        return f"io_uring_setup failed: {exc}"
    with r:
        try:
            arm(r)
            r.submit(0)
            act()
            r.submit(1, 1.0)
            cqes = r.reap()
        except OSError as exc:
            return str(exc)
        return cqes[0] if cqes else "no completion within 1 s"


def probe_recv_multishot(bundle: bool = False) -> str:
    """'' if a multishot RECV into a provided-buffer ring works here (with ``bundle``: one CQE
    filling several buffers), else why not."""
    lib = _ring.lib
    a, b = socket.socketpair()
    state: dict = {}

    def arm(r):
        try:
            br = state["br"] = _ring.BufRing(r, 0, 4, 256)
        except OSError as exc:
            raise OSError(exc.errno, "IORING_REGISTER_PBUF_RING refused (needs Linux 5.19)") from None
        br.set_bundle(bundle)
        q = state["q"] = br.rxq(b.fileno(), 1)
        r.prep_recv_multishot(q)

    sent = b"p" * 700 if bundle else b"probe"
    try:
        got = _round_trip(arm, lambda: a.send(sent))
        if isinstance(got, str):
            return got
        q = state["q"]
        # The bridge files the data on the queue and reports the socket once, armed on (F_MORE).
        if bundle and q.bytes and q.bytes < len(sent):
            return "the kernel fills one buffer per CQE (no bundles)"
        if got[0] != 1 or q.bytes != len(sent) or not got[2] & lib.IORING_CQE_F_MORE:
            if q.end == -errno.EINVAL:
                return ("the kernel refuses IORING_RECVSEND_BUNDLE (needs Linux 6.10)" if bundle
                        else "the kernel refuses IORING_RECV_MULTISHOT (needs Linux 6.0)")
            return f"multishot receive answered {got!r} (end {q.end})"
        return ""
    finally:
        if "q" in state:
            _ring._bridge.rxq_free(_ring.address(state["q"]))
        if "br" in state:
            state["br"].close()
        a.close()
        b.close()


def probe_accept_multishot() -> str:
    """'' if IORING_ACCEPT_MULTISHOT works here, else why not."""
    lib = _ring.lib
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    clients: list[socket.socket] = []
    try:
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(4)

        def arm(r):
            r.prep_accept_multishot(lsock.fileno(), socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC, 1)

        def connect():
            c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            clients.append(c)
            c.connect(lsock.getsockname())

        got = _round_trip(arm, connect)
        if isinstance(got, str):
            return got
        _ud, res, flags = got
        if res >= 0:
            os.close(res)
        if res == -errno.EINVAL:
            return "the kernel refuses IORING_ACCEPT_MULTISHOT (needs Linux 5.19)"
        if res < 0 or not flags & lib.IORING_CQE_F_MORE:
            return f"multishot accept answered {got!r}"
        return ""
    except OSError as exc:
        return f"cannot probe multishot accept: {exc}"
    finally:
        for c in clients:
            c.close()
        lsock.close()
