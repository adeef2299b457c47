"""Fixtures of the conformance suite: every test runs once per available backend."""

from __future__ import annotations

import time
from typing import Callable

import pytest

import netimpl
from tests.conftest import available_impls, need


@pytest.fixture(params=available_impls())
def impl(request) -> str:
    return request.param


class Net:
    """Makes sockets of one backend and closes whatever is left at the end."""

    def __init__(self, impl: str) -> None:
        self.impl = impl
        self.socks: list[netimpl.Sock] = []
        self.groups: list[netimpl.SockGroup] = []

    def listen(self, host: str = "127.0.0.1", **kw) -> netimpl.Sock:
        s = netimpl.listen(host, 0, impl=self.impl, **kw)
        self.socks.append(s)
        return s

    def connect(self, host: str, port: int, **kw) -> netimpl.Sock:
        s = netimpl.connect(host, port, impl=self.impl, **kw)
        self.socks.append(s)
        return s

    def accept(self, lsock: netimpl.Sock, timeout: float = 5.0) -> netimpl.Sock:
        deadline = time.monotonic() + timeout
        while True:
            s = lsock.accept()
            if s is not None:
                self.socks.append(s)
                return s
            if time.monotonic() > deadline:
                raise TimeoutError("no connection to accept")
            time.sleep(0.001)

    def pair(self, host: str = "127.0.0.1", **kw) -> tuple[netimpl.Sock, netimpl.Sock]:
        """(client, server) connected over ``host``."""
        lsock = self.listen(host, **kw)
        client = self.connect(host, lsock.getaddr()[1], **kw)
        return client, self.accept(lsock)

    def group(self, mixed: bool = False) -> netimpl.SockGroup:
        """A new group; ``mixed``: it also holds an idle connected socket of every other available backend."""
        g = netimpl.SockGroup()
        self.groups.append(g)
        if mixed:
            others = [i.name for i in netimpl.impls() if i.available and i.name != self.impl]
            need("" if others else f"a mixed group needs a second available backend beside {self.impl}")
            for name in others:
                lsock = netimpl.listen("127.0.0.1", 0, impl=name)
                peer = netimpl.connect("127.0.0.1", lsock.getaddr()[1], impl=name)
                idle = self.accept(lsock)
                self.socks += [lsock, peer]
                g.add_sock(idle, lambda grp, s: s.recv_into(bytearray(4096)))
        return g

    def close(self) -> None:
        for g in self.groups:
            for s in g.socks:
                g.remove_sock(s)
        for s in self.socks:
            s.close()
        for g in self.groups:
            g.close()


@pytest.fixture(params=[False, True], ids=["single", "mixed"])
def mixed(request) -> bool:
    """Run once with a group of this backend alone, once in a group that holds every backend."""
    return request.param


@pytest.fixture
def net(impl):
    n = Net(impl)
    yield n
    n.close()


def wait_for(cond: Callable[[], bool], poll: Callable[[], object] | None = None, timeout: float = 5.0) -> None:
    """Call ``poll`` until ``cond()`` holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        if poll is not None:
            poll()
        else:
            time.sleep(0.001)


def read_all(sock: netimpl.Sock, n: int, timeout: float = 5.0) -> bytes:
    """Read exactly ``n`` bytes from a socket outside any group."""
    out = bytearray()
    buf = bytearray(65536)
    deadline = time.monotonic() + timeout
    while len(out) < n:
        got = sock.recv_into(memoryview(buf)[:min(len(buf), n - len(out))])
        if got == 0:
            raise EOFError(f"EOF after {len(out)} of {n} bytes")
        if got is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(out)} of {n} bytes in time")
            time.sleep(0.0005)
            continue
        out += buf[:got]
    return bytes(out)


def pattern(n: int, seed: int = 0) -> bytes:
    return bytes((seed * 7 + i) % 251 for i in range(n))
