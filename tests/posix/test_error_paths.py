"""Error paths of the posix backend's system calls, driven through stand-ins."""

from __future__ import annotations

import errno
import logging
import os
import socket

import pytest

import netimpl
from netimpl import tcp
from tests.posix.conftest import force_zerocopy
from tests.posix.scripted import Scripted, zc_cmsg


class Refusing:
    """A socket stand-in whose setsockopt refuses with ``code``."""

    def __init__(self, code: int) -> None:
        self.code = code

    def setsockopt(self, *args):
        raise OSError(self.code, os.strerror(self.code))


@pytest.mark.parametrize("code", [errno.ENOPROTOOPT, errno.EOPNOTSUPP, errno.EPERM])
def test_so_zerocopy_refused_means_copy_not_an_error(code):
    assert tcp.enable_zerocopy(Refusing(code)) is False


def test_unexpected_so_zerocopy_error_is_logged(caplog):
    caplog.set_level(logging.WARNING, logger="netimpl")
    assert tcp.enable_zerocopy(Refusing(errno.ENOMEM)) is False
    assert any("SO_ZEROCOPY" in r.getMessage() for r in caplog.records)


def test_error_queue_read_failure_is_logged_and_keeps_requests_pending(pair, caplog):
    caplog.set_level(logging.WARNING, logger="netimpl")
    client, _ = pair
    force_zerocopy(client)
    script = client._sys = Scripted()
    log = []
    client.writev_async(netimpl.Request([bytes(100)], cb=lambda r, st: log.append(st)))
    client.flush()

    def broken(s):
        raise OSError(errno.EIO, "I/O error")

    script.recv_errqueue = broken
    client.flush()  # reaps: the read fails; nothing is completed early, nothing raised
    assert log == [] and len(client._pending) == 1
    assert any("error queue" in r.getMessage() for r in caplog.records)
    del script.recv_errqueue  # the queue reads again, and the release arrives
    script.errqueue.append([zc_cmsg(0, 0)])
    client.flush()
    assert log == [0] and not client._pending


class Accepting:
    """A listening-socket stand-in whose accept answers from a script."""

    def __init__(self, real: socket.socket, steps) -> None:
        self.real = real
        self.steps = list(steps)

    def accept(self):
        step = self.steps.pop(0)
        if isinstance(step, BaseException):
            raise step
        return self.real.accept()

    def __getattr__(self, name):
        return getattr(self.real, name)


def test_accept_skips_connections_that_died_in_the_backlog_and_raises_real_errors():
    lsock = netimpl.listen("127.0.0.1", 0, impl="posix")
    try:
        real = lsock._s
        lsock._s = Accepting(real, [ConnectionAbortedError(errno.ECONNABORTED, "aborted"),
                                    BlockingIOError(errno.EAGAIN, "none")])
        assert lsock.accept() is None  # ECONNABORTED skipped, then nothing pending
        lsock._s = Accepting(real, [OSError(errno.EMFILE, "Too many open files")])
        with pytest.raises(OSError) as info:
            lsock.accept()
        assert info.value.errno == errno.EMFILE
    finally:
        lsock._s = real
        lsock.close()


def test_add_sock_failure_leaves_the_group_and_the_socket_unchanged(pair):
    client, _ = pair
    g = netimpl.SockGroup()
    real_fd = client._fd
    client._fd = 10_000  # an fd epoll cannot watch: EBADF from epoll_ctl
    try:
        with pytest.raises(OSError) as info:
            g.add_sock(client, lambda grp, s: None)
        assert info.value.errno == errno.EBADF
        assert client.group is None and g.socks == []
    finally:
        client._fd = real_fd
    g.add_sock(client, lambda grp, s: None)  # the real fd works afterwards
    g.remove_sock(client)
    g.close()
