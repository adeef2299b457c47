"""examples/: each runs as documented and does what its docstring says."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import netimpl
from tests.conftest import available_impls, need

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def read_lines(c: socket.socket, n: int) -> list[bytes]:
    data = b""
    while data.count(b"\n") < n:
        chunk = c.recv(65536)
        assert chunk, f"EOF after {data!r}"
        data += chunk
    return data.split(b"\n")[:n]


@pytest.mark.parametrize("impl", available_impls())
def test_aio_lines_serves_coroutines_per_connection_and_stops_on_ctrl_c(impl):
    info = next(i for i in netimpl.impls() if i.name == impl)
    need("" if info.available else info.reason)
    proc = subprocess.Popen([sys.executable, str(EXAMPLES / "aio_lines.py"), "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={"NETIMPL_IMPL": impl, "PATH": "/usr/bin:/bin"})
    try:
        banner = proc.stdout.readline()
        m = re.match(r"serving on 127\.0\.0\.1:(\d+) \((\w+) backend\)", banner)
        assert m and m.group(2) == impl, banner
        port = int(m.group(1))
        slow = socket.create_connection(("127.0.0.1", port), timeout=5)
        fast = socket.create_connection(("127.0.0.1", port), timeout=5)
        slow.sendall(b"SLEEP 300\nECHO after\n")
        t0 = time.monotonic()
        fast.sendall(b"UPPER quick\nBOGUS\n")
        assert read_lines(fast, 2) == [b"QUICK", b"ERR unknown request"]
        assert time.monotonic() - t0 < 0.25, "a slow request on one connection held up another"
        assert read_lines(slow, 2) == [b"slept 300", b"after"]
        # A client that sends far more than it reads: paused, then everything answered in order.
        flood = socket.create_connection(("127.0.0.1", port), timeout=10)
        lines = [b"ECHO %d" % i for i in range(5000)]
        flood.sendall(b"\n".join(lines) + b"\n")
        flood.shutdown(socket.SHUT_WR)
        assert read_lines(flood, 5000) == [b"%d" % i for i in range(5000)]
        assert flood.recv(10) == b""       # EOF after the last reply: the server closed it
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 0 and out.strip() == "stopped" and "Traceback" not in err, (out, err)
