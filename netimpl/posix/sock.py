"""PosixSock: a kernel TCP socket driven by plain non-blocking system calls.

Facts that shape it:

* ``sendmsg`` takes at most IOV_MAX iovecs; gathering up to 64 across queued
  requests (SPDK's IOV_BATCH_SIZE) makes one call out of many small writes.
* A short send means the kernel's send buffer is full: stop and wait for the
  next poll rather than spin.
* With SO_ZEROCOPY set, ``MSG_ZEROCOPY`` is asked only for batches of at
  least ``zerocopy_threshold`` bytes (pinning pages costs more than copying a
  small batch). When the socket's optmem budget is spent the kernel answers
  ``ENOBUFS``; that batch is then sent by copy, nothing lost.
* Zero-copy pages stay the kernel's until their notification is read from
  the error queue (:mod:`.zerocopy`). A request is completed only when every
  zero-copy send that carried any of its bytes is released (SPDK #3610).
"""

from __future__ import annotations

import errno
import os
import socket
from typing import TYPE_CHECKING, Any

from .._kernel import MSG_ZEROCOPY, SO_INCOMING_CPU, SO_INCOMING_NAPI_ID
from ..accel import native
from ..errors import logger
from ..sock import IOV_BATCH_SIZE, Sock
from ..tcp import configure_accepted, enable_zerocopy, want_zerocopy
from ..unix import remove_path
from .syscalls import SYSCALLS
from .zerocopy import ZcTracker, parse_zerocopy_cmsg

if TYPE_CHECKING:
    from ..options import ImplOpts, SockOpts
    from . import PosixImpl

_SEND_FLAGS = socket.MSG_NOSIGNAL
_ZC_SEND_FLAGS = socket.MSG_NOSIGNAL | MSG_ZEROCOPY
_PEEK_FLAGS = socket.MSG_PEEK | socket.MSG_DONTWAIT


class PosixSock(Sock):
    """A socket of backend ``posix``."""


    def __init__(self, impl: "PosixImpl", s: socket.socket, impl_opts: "ImplOpts", sock_opts: "SockOpts",
                 *, server: bool, listener: bool = False) -> None:
        super().__init__(impl, s.fileno(), impl_opts, sock_opts)
        self._sys = SYSCALLS  # the syscall seam; a test replaces it per socket
        self._direct = True  # plain syscalls on the fd: the compiled core's fast paths may apply
        self._s = s
        self._listener = listener
        self._zc: ZcTracker | None = None
        self._unix_path: tuple[str | bytes, int] | None = None  # a Unix listener's path and inode, removed at close
        if listener:
            self._pipe = None
        elif want_zerocopy(s, impl_opts, sock_opts, server) and enable_zerocopy(s):
            self._zc = ZcTracker()

    @property
    def zerocopy(self) -> bool:
        return self._zc is not None

    # -- connection ---------------------------------------------------------

    def _accept(self) -> "PosixSock | None":
        if not self._listener:
            raise OSError(errno.EINVAL, "accept on a socket that is not listening")
        while True:
            try:
                s, _addr = self._s.accept()
            except BlockingIOError:
                return None
            except InterruptedError:
                continue
            except OSError as exc:
                # The connection died in the backlog: nothing to accept.
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue
                raise
            self.stats.syscalls += 1
            try:
                configure_accepted(s, self._impl_opts, self._sock_opts)
                return type(self)(self._impl, s, self._impl_opts, self._sock_opts, server=True)  # type: ignore[arg-type]
            except BaseException:
                s.close()
                raise

    def getaddr(self) -> tuple[str, int, str, int]:
        self._check_open()
        s = self._s
        if s.family == socket.AF_UNIX:  # paths, port 0; an unnamed end is ""
            return _unix_name(s.getsockname()), 0, "" if self._listener else _unix_name(s.getpeername()), 0
        local = s.getsockname()
        if self._listener:
            return local[0], local[1], "", 0
        peer = s.getpeername()
        return local[0], local[1], peer[0], peer[1]

    def is_ipv4(self) -> bool:
        self._check_open()
        return self._s.family == socket.AF_INET

    def is_ipv6(self) -> bool:
        self._check_open()
        return self._s.family == socket.AF_INET6

    def is_connected(self) -> bool:
        self._check_open()
        try:
            return self._s.recv(1, _PEEK_FLAGS) != b""
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            return False

    @property
    def placement_id(self) -> int:
        mode = self._impl_opts.enable_placement_id
        if not mode or self._closed:
            return -1
        opt = SO_INCOMING_NAPI_ID if mode == 1 else SO_INCOMING_CPU
        try:
            value = self._s.getsockopt(socket.SOL_SOCKET, opt)
        except OSError:
            return -1
        # NAPI id 0 means "no NAPI context seen yet".
        return -1 if (mode == 1 and value == 0) or value < 0 else value

    def _set_recvlowat(self, n: int) -> None:
        self._s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, n)

    def _set_recvbuf(self, n: int) -> None:
        self._s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, n)

    def _set_sendbuf(self, n: int) -> None:
        self._s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, n)

    # -- data -----------------------------------------------------------------

    def _readv(self, bufs: list[memoryview]) -> int | None:
        while True:
            self.stats.syscalls += 1
            try:
                return self._sys.readv(self._fd, bufs)
            except BlockingIOError:
                return None
            except InterruptedError:
                continue

    def _read_into(self, buf: bytearray) -> int | None:
        while True:
            self.stats.syscalls += 1
            try:
                return self._sys.recv_into(self._s, buf)
            except BlockingIOError:
                return None
            except InterruptedError:
                continue

    def _read_bytes(self, n: int) -> bytes | None:
        while True:
            self.stats.syscalls += 1
            try:
                return self._sys.recv(self._s, n)
            except BlockingIOError:
                return None
            except InterruptedError:
                continue

    def _writev(self, bufs: list[Any]) -> int | None:
        while True:
            self.stats.syscalls += 1
            try:
                return self._sys.sendmsg(self._s, bufs, (), _SEND_FLAGS)
            except BlockingIOError:
                return None
            except InterruptedError:
                continue

    def _flush_py(self) -> None:
        """The flush in Python: the reference, and the path of zero-copy sockets and replaced seams."""
        zc = self._zc
        if zc is not None and zc.inflight:
            self._check_zcopy()
        stats = self.stats
        sendmsg = self._sys.sendmsg
        s = self._s
        threshold = self._impl_opts.zerocopy_threshold
        while self._queued:  # read afresh: the compiled core hands out a snapshot
            iovs, total = _gather(self._queued)
            if not total:
                self._requests_sent(0, False)
                continue
            use_zc = zc is not None and total >= threshold
            stats.syscalls += 1
            try:
                n = sendmsg(s, iovs, (), _ZC_SEND_FLAGS if use_zc else _SEND_FLAGS)
            except BlockingIOError:
                break
            except InterruptedError:
                continue
            except OSError as exc:
                if exc.errno == errno.ENOBUFS and use_zc:
                    # optmem_max spent on notifications: copy this batch instead.
                    stats.zerocopy_fallbacks += 1
                    use_zc = False
                    stats.syscalls += 1
                    try:
                        n = sendmsg(s, iovs, (), _SEND_FLAGS)
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError as exc2:
                        self._send_failed(exc2)
                        break
                else:
                    self._send_failed(exc)
                    break
            stats.bytes_sent += n
            touched = self._requests_sent(n, use_zc)
            if use_zc:
                zc.sent(touched)  # type: ignore[union-attr, arg-type]
                stats.zerocopy_sends += 1
            if n < total:
                break
        self._complete_pending()

    if native is not None:
        #: Compiled: gather, sendmsg(2) and completions in C; it calls _flush_py itself for a zero-copy
        #: socket or a socket whose syscall seam a test replaced.
        _flush = native.SockCore._posix_flush
    else:
        _flush = _flush_py

    def _send_failed(self, exc: OSError) -> None:
        logger.debug("%r: send failed: %s", self, exc)
        self._fail_queued(exc.errno or errno.EIO)

    def _check_zcopy(self) -> None:
        """Read every zero-copy notification queued on the socket and complete what it frees."""
        zc = self._zc
        if zc is None:
            return
        recv_errqueue = self._sys.recv_errqueue
        stats = self.stats
        released = False
        while True:
            stats.syscalls += 1
            try:
                ancdata = recv_errqueue(self._s)
            except BlockingIOError:
                break
            except InterruptedError:
                continue
            except OSError as exc:
                logger.warning("%r: reading the error queue failed: %s", self, exc)
                break
            for level, type_, data in ancdata:
                r = parse_zerocopy_cmsg(level, type_, data)
                if r is None:
                    logger.debug("%r: ignoring error-queue message level=%d type=%d", self, level, type_)
                    continue
                if r.copied:
                    stats.zerocopy_copied += len(r)
                for reqs in zc.released(r):
                    for req in reqs:
                        self._zc_released(req)
                    released = True
        if released:
            self._complete_pending()

    def _close(self) -> None:
        """Close the fd, or leave it to the orphanage while error-queue zero-copy sends are in flight."""
        if self._pending and self._zc is not None:
            self._check_zcopy()
        if self._pending:
            # The kernel still holds zero-copy pages of these requests.
            self._impl.orphanage.adopt(self)  # type: ignore[attr-defined]
        else:
            self._s.close()
        if self._unix_path is not None:
            remove_path(*self._unix_path)


def _unix_name(name: str | bytes) -> str:
    """An AF_UNIX address as a str (an abstract name keeps its leading NUL)."""
    return name if isinstance(name, str) else os.fsdecode(name)



if native is not None:
    # The compiled fast paths make these very calls themselves, on sockets whose seam is SYSCALLS and
    # whose class reads with these methods.
    native.set_default_sys(SYSCALLS, PosixSock.__dict__["_read_into"], PosixSock.__dict__["_readv"])

def _gather(queued) -> tuple[list[Any], int]:
    """Up to IOV_BATCH_SIZE iovecs from the queued requests, honouring each one's offset.

    A request not yet started that fits is taken whole with ``list.extend``;
    a partly sent one is walked from its send cursor (its first buffer not
    sent whole), and the one that overflows the batch buffer by buffer.
    """
    iovs: list[Any] = []
    total = 0
    for req in queued:
        bufs = req._bufs
        room = IOV_BATCH_SIZE - len(iovs)
        if not req._offset and len(bufs) <= room:
            iovs += bufs
            total += req._nbytes
            if len(bufs) == room:
                return iovs, total
            continue
        off = req._iov_off
        for i in range(req._iov_idx, len(bufs)):
            b = bufs[i]
            n = len(b)
            if off:
                b = memoryview(b)[off:]
                n -= off
                off = 0
            iovs.append(b)
            total += n
            if len(iovs) == IOV_BATCH_SIZE:
                return iovs, total
    return iovs, total
