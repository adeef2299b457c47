"""Where closed zero-copy sockets wait for the kernel to release their pages.

``close`` must not hand a buffer back while the kernel may still read it
(SPDK #3760 corrupted data exactly there), and must not block for an unknown
time either. So a socket closed with zero-copy sends in flight keeps its fd
open here, invisible to the user (``fileno()`` is -1, every call raises
EBADF), in an epoll set of its own. Every posix group watches that set's fd,
so any group poll wakes when an orphan's notification arrives and reaps it;
an orphan's fd is closed, and its last callbacks run, once its last
zero-copy send is released. At interpreter exit the orphanage waits up to
``EXIT_WAIT`` seconds for stragglers.
"""

from __future__ import annotations

import atexit
import select
import time
from typing import TYPE_CHECKING

from ..errors import logger

if TYPE_CHECKING:
    from .sock import PosixSock

EXIT_WAIT = 2.0


class Orphanage:
    """Closed posix sockets with zero-copy sends in flight."""

    def __init__(self) -> None:
        self._ep = select.epoll()
        self._socks: dict[int, "PosixSock"] = {}
        atexit.register(self._at_exit)

    def __len__(self) -> int:
        return len(self._socks)

    def fileno(self) -> int:
        return self._ep.fileno()

    def adopt(self, sock: "PosixSock") -> None:
        fd = sock._fd
        self._ep.register(fd, select.EPOLLERR)
        self._socks[fd] = sock
        logger.debug("%r: closed with %d zero-copy requests in flight; kept until released", sock, len(sock._pending))

    def reap(self, timeout: float = 0.0) -> None:
        """Read the orphans' notifications; close those with nothing left in flight."""
        if not self._socks:
            return
        self._ep.poll(timeout, 1)
        for fd, sock in list(self._socks.items()):
            sock._check_zcopy()
            if not sock._pending:
                del self._socks[fd]
                self._ep.unregister(fd)
                sock._s.close()

    def _at_exit(self) -> None:
        deadline = time.monotonic() + EXIT_WAIT
        while self._socks and time.monotonic() < deadline:
            self.reap(0.05)
        if self._socks:
            logger.warning("%d closed sockets still had zero-copy sends in flight at exit", len(self._socks))
        self._ep.close()
