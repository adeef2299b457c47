"""The compiled core is in use when it was built, and says why when it is not.

A silent fallback to the Python twin would leave the compiled core
untested and the fast path unused: in CI (where the C compiler is
installed) the compiled core must be present unless ``NETIMPL_NATIVE=0``
asks for the twin, which CI also runs.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import netimpl
from netimpl import _pycore, accel
from netimpl.sock import Sock
from tests.conftest import need


def test_native_core_is_in_use_unless_disabled():
    if os.environ.get(accel.ENV_VAR, "1") == "0":
        assert accel.native is None and accel.ENV_VAR in accel.reason
        assert netimpl.Request is _pycore.Request
        return
    need(accel.reason and f"the compiled core is not in use: {accel.reason}")
    assert netimpl.Request is accel.native.Request
    assert issubclass(Sock, accel.native.SockCore)
    s = netimpl.listen("127.0.0.1", 0, impl="posix")
    try:
        assert type(s.stats) is accel.native.SockStats
        assert type(netimpl.SockGroup().stats) is accel.native.GroupStats
        assert type(s)._flush is accel.native.SockCore._posix_flush
    finally:
        s.close()


def test_env_var_forces_the_python_twin():
    code = "import netimpl, netimpl.accel as a; print(a.native is None, a.reason, netimpl.Request.__module__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, accel.ENV_VAR: "0"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0] == "True" and "NETIMPL_NATIVE=0" in out.stdout
    assert "netimpl._pycore" in out.stdout


def test_pipe_views_keep_the_ring_alive():
    if os.environ.get(accel.ENV_VAR, "1") == "0":
        pytest.skip("the Python twin runs (NETIMPL_NATIVE=0): no compiled Pipe to check")
    need(accel.reason and f"the compiled core is not in use: {accel.reason}")
    pipe = accel.native.Pipe(8)
    view = pipe.writer_get_buffer(8)[0]
    del pipe  # the view exports the ring's buffer: the mapping must outlive this name
    view[:] = b"abcdefgh"
    assert bytes(view) == b"abcdefgh"


def test_small_reads_go_through_the_compiled_pipe_with_one_syscall():
    lsock = netimpl.listen("127.0.0.1", 0, impl="posix")
    client = netimpl.connect("127.0.0.1", lsock.getaddr()[1], impl="posix")
    server = None
    while server is None:
        server = lsock.accept()
    try:
        client.writev([b"0123456789" * 10])
        buf = bytearray(10)
        got = b""
        while len(got) < 100:
            n = server.recv_into(buf)
            if n:
                got += bytes(buf[:n])
        assert got == b"0123456789" * 10
        assert server.stats.bytes_received == 100
        assert server.stats.syscalls <= 3  # the first fill takes all (or nearly): the rest come from the pipe
        assert not server._has_buffered()
    finally:
        for s in (client, server, lsock):
            s.close()
