"""A scripted stand-in for the posix syscall seam."""

from __future__ import annotations

import socket
import struct

from netimpl._kernel import IP_RECVERR, IPV6_RECVERR, SO_EE_CODE_ZEROCOPY_COPIED, SO_EE_ORIGIN_ZEROCOPY, SOL_IPV6
from netimpl.posix.syscalls import SYSCALLS


def zc_cmsg(lo: int, hi: int, copied: bool = False, v6: bool = False) -> tuple[int, int, bytes]:
    data = struct.pack("=IBBBBII", 0, SO_EE_ORIGIN_ZEROCOPY, 0, SO_EE_CODE_ZEROCOPY_COPIED if copied else 0, 0, lo, hi)
    data += bytes(16)  # offender address, unused
    return (SOL_IPV6, IPV6_RECVERR, data) if v6 else (socket.SOL_IP, IP_RECVERR, data)


class Scripted:
    """``sendmsg`` answers come from ``sends``: an int (bytes taken, capped at what was offered),
    ``None`` (take all) or an exception; when the script runs out it takes all.
    ``errqueue`` holds control-data lists for ``recv_errqueue``."""

    def __init__(self, sends=(), errqueue=()) -> None:
        self.sends = list(sends)
        self.errqueue = list(errqueue)
        self.calls: list[dict] = []
        self.wire = bytearray()

    def sendmsg(self, s, iovs, ancdata, flags):
        total = sum(len(memoryview(b).cast("B")) for b in iovs)
        self.calls.append({"iovs": [len(memoryview(b).cast("B")) for b in iovs], "flags": flags, "total": total})
        step = self.sends.pop(0) if self.sends else None
        if isinstance(step, BaseException):
            raise step
        n = total if step is None else min(step, total)
        data = b"".join(bytes(memoryview(b).cast("B")) for b in iovs)
        self.wire += data[:n]
        return n

    def readv(self, fd, bufs):
        return SYSCALLS.readv(fd, bufs)

    def recv_into(self, s, buf):
        return SYSCALLS.recv_into(s, buf)

    def recv_errqueue(self, s):
        if not self.errqueue:
            raise BlockingIOError
        return self.errqueue.pop(0)
