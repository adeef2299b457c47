"""The system calls of the posix backend, behind one seam that tests replace.

A test scripts partial sends, EAGAIN, ENOBUFS or error-queue contents by
setting ``sock._sys`` to an object with these methods.
"""

from __future__ import annotations

import os
import socket

from .._kernel import MSG_ERRQUEUE

#: Room for one ``struct sock_extended_err`` and its offender address.
ERRQUEUE_CMSG_SPACE = socket.CMSG_SPACE(16 + 28) * 4


class PosixSyscalls:
    """The real calls. Each raises ``OSError`` as the socket module does.

    The hot ones are the socket module's own methods, unwrapped: the seam
    costs no Python call on the data path.
    """

    __slots__ = ()

    #: ``sendmsg(s, iovs, ancdata, flags)``
    sendmsg = staticmethod(socket.socket.sendmsg)
    #: ``recv_into(s, buf)``
    recv_into = staticmethod(socket.socket.recv_into)
    #: ``recv(s, n) -> bytes``
    recv = staticmethod(socket.socket.recv)
    #: ``readv(fd, bufs)``
    readv = staticmethod(os.readv)

    @staticmethod
    def recv_errqueue(s: socket.socket) -> list[tuple[int, int, bytes]]:
        """One error-queue message's control data; raises BlockingIOError when empty."""
        _data, ancdata, _flags, _addr = s.recvmsg(0, ERRQUEUE_CMSG_SPACE, MSG_ERRQUEUE | socket.MSG_DONTWAIT)
        return ancdata


SYSCALLS = PosixSyscalls()
