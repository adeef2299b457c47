"""``python -m netimpl.nbd --workers N``: one port, N serving processes, the same exports."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from tests.nbd.client import Client


def children(pid: int) -> set[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return {int(p) for p in f.read().split()}


def owner(client: Client, pids: set[int]) -> int:
    """The worker process holding the server end of ``client``'s connection."""
    local, server = client.s.getsockname()[1], client.s.getpeername()[1]
    inode = None
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            # the server end: its own port is the server's, its peer's is ours; established, with an inode
            ends = (int(fields[1].split(":")[1], 16), int(fields[2].split(":")[1], 16), fields[3])
            if ends == (server, local, "01") and fields[9] != "0":
                inode = fields[9]
    assert inode, f"no server end for client port {local}"
    for pid in pids:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                    return pid
            except OSError:
                continue
    raise AssertionError(f"no worker holds socket {inode}")


class Workers:
    def __init__(self, impl: str, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "netimpl.nbd", "--host", "127.0.0.1", "--port", "0",
                                      "--impl", impl, "--workers", "2", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.banner = self.proc.stdout.readline()
        m = re.search(r"listening on 127\.0\.0\.1:(\d+), backend (\w+), 2 workers", self.banner)
        if not m:
            self.proc.kill()
            raise AssertionError(f"no startup line: {self.banner!r} {self.proc.communicate()!r}")
        self.port = int(m.group(1))

    def pids(self) -> set[int]:
        return children(self.proc.pid)

    def clients_on_both(self) -> tuple[Client, Client]:
        """Two connected clients served by different workers."""
        pids = self.pids()
        assert len(pids) == 2, pids
        by_worker: dict[int, Client] = {}
        spare = []
        for _ in range(64):
            c = Client(self.port)
            c.connect()
            pid = owner(c, pids)
            if pid in by_worker:
                spare.append(c)
            else:
                by_worker[pid] = c
            if len(by_worker) == 2:
                break
        for c in spare:
            c.close()
        assert len(by_worker) == 2, "64 connections all landed on one worker"
        a, b = by_worker.values()
        return a, b


@pytest.mark.parametrize("export", ["memory", "file"])
def test_workers_share_the_port_and_the_exports(impl, tmp_path, export):
    args = ["--size", "64M"]
    if export == "file":
        path = tmp_path / "disk.img"
        path.write_bytes(b"\0" * (8 << 20))
        args = ["--size", "0", "--export", f"={path}"]
    w = Workers(impl, *args)
    try:
        a, b = w.clients_on_both()
        data = os.urandom(1 << 20)
        assert a.write(12345, data, flags=1) == 0          # FUA: durable before the reply
        a.send_request("FLUSH", handle=9)
        assert a.reply()[:2] == (9, 0)
        assert b.read(12345, len(data)) == data            # written through one worker, read through another
        assert b.write(7 << 20, b"back" * 1024) == 0
        assert a.read(7 << 20, 4096) == b"back" * 1024
        for c in (a, b):
            c.close()
        # A worker that dies is reported and replaced; the port keeps serving.
        before = w.pids()
        victim = sorted(before)[0]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while (len(w.pids()) < 2 or victim in w.pids()) and time.monotonic() < deadline:
            time.sleep(0.05)
        if len(w.pids()) != 2 or victim in w.pids():
            left = w.pids()
            w.proc.kill()
            _, err = w.proc.communicate(timeout=30)
            states = {p: open(f"/proc/{p}/stat").read().split()[2] for p in left if os.path.exists(f"/proc/{p}")}
            raise AssertionError(f"killed {victim} of {sorted(before)}; 10 s later: {states} (pid: state); "
                                 f"the pool said: {err[-3000:]!r}")
        a, b = w.clients_on_both()
        assert a.read(12345, len(data)) == data and b.read(12345, len(data)) == data
        a.close()
        b.close()
        pids = w.pids()
        w.proc.send_signal(signal.SIGTERM)
        out, err = w.proc.communicate(timeout=30)
    finally:
        w.proc.kill()
    assert w.proc.returncode == 0 and "Traceback" not in err, err[-3000:]
    assert "stopped 2 workers" in out and "died (signal 9)" in err
    assert not any(os.path.exists(f"/proc/{p}") and open(f"/proc/{p}/stat").read().split()[2] != "Z" for p in pids)


def test_workers_flag_is_checked():
    out = subprocess.run([sys.executable, "-m", "netimpl.nbd", "--workers", "0"], capture_output=True, text=True)
    assert out.returncode == 2 and "--workers 0 is outside 1..1024" in out.stderr
