from __future__ import annotations

import pytest

import netimpl
from netimpl.posix.zerocopy import ZcTracker


@pytest.fixture
def pair():
    """A connected posix (client, server) pair over loopback; closed afterwards."""
    lsock = netimpl.listen("127.0.0.1", 0, impl="posix")
    client = netimpl.connect("127.0.0.1", lsock.getaddr()[1], impl="posix")
    server = None
    while server is None:
        server = lsock.accept()
    yield client, server
    for s in (client, server, lsock):
        s.close()


def force_zerocopy(sock) -> None:
    """Make the socket account sends as zero-copy (the syscalls are scripted)."""
    sock._zc = ZcTracker()
