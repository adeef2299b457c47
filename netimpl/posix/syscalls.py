"""The system calls of the posix backend, behind one seam that tests replace.

A test scripts partial sends, EAGAIN, ENOBUFS or error-queue contents by
setting ``sock._sys`` to an object with these methods.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from .._kernel import MSG_ERRQUEUE

#: Room for one ``struct sock_extended_err`` and its offender address.
ERRQUEUE_CMSG_SPACE = socket.CMSG_SPACE(16 + 28) * 4


class PosixSyscalls:
    """The real calls. Each raises ``OSError`` as the socket module does."""

    __slots__ = ()

    @staticmethod
    def sendmsg(s: socket.socket, iovs: list[Any], flags: int) -> int:
        return s.sendmsg(iovs, (), flags)

    @staticmethod
    def readv(fd: int, bufs: list[memoryview]) -> int:
        return os.readv(fd, bufs)

    @staticmethod
    def recv_errqueue(s: socket.socket) -> list[tuple[int, int, bytes]]:
        """One error-queue message's control data; raises BlockingIOError when empty."""
        _data, ancdata, _flags, _addr = s.recvmsg(0, ERRQUEUE_CMSG_SPACE, MSG_ERRQUEUE | socket.MSG_DONTWAIT)
        return ancdata


SYSCALLS = PosixSyscalls()
