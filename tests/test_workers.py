"""netimpl.workers.WorkerPool: workers sharing one port, replaced when they die, stopped by a signal."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

import netimpl
from netimpl.workers import WorkerPool
from tests.conftest import available_impls

# A pool whose workers answer each connection's first bytes with "<index> <pid>\n".
POOL = textwrap.dedent("""
    import logging, os, sys
    import netimpl
    from netimpl.workers import WorkerPool

    logging.basicConfig(level=logging.INFO, stream=sys.stderr)

    def target(listener, index):
        group = netimpl.SockGroup()
        def on_read(g, s):
            try:
                n = s.recv_into(bytearray(100))
            except OSError:
                n = 0
            if n:
                s.writev_async(netimpl.Request([b"%d %d\\n" % (index, os.getpid())]))
            elif n == 0:
                g.remove_sock(s); s.close()
        group.add_sock(listener, lambda g, l: [g.add_sock(s, on_read) for s in iter(l.accept, None)])
        while True:
            group.poll(timeout=0.5)

    pool = WorkerPool(2, target, "127.0.0.1", 0, impl=sys.argv[1])
    pool.start()                      # returns once every worker listens
    print(pool.port, flush=True)
    sys.exit(pool.wait())
""")


def ask(port: int) -> tuple[int, int]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
        c.sendall(b"who")
        line = b""
        while not line.endswith(b"\n"):
            chunk = c.recv(100)
            assert chunk, "the worker closed the connection without answering"
            line += chunk
    index, pid = line.split()
    return int(index), int(pid)


def workers_seen(port: int) -> dict[int, int]:
    """Worker index -> pid, asking until both workers have answered."""
    seen = {}
    deadline = time.monotonic() + 10
    while len(seen) < 2 and time.monotonic() < deadline:
        index, pid = ask(port)
        seen[index] = pid
    assert sorted(seen) == [0, 1], f"connections reached only workers {sorted(seen)}"
    return seen


def children(pid: int) -> set[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return {int(p) for p in f.read().split()}


def state(pid: int) -> str:
    """The process state letter of proc(5)'s stat ('T' for stopped)."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("impl", available_impls())
def test_pool_serves_on_every_worker_replaces_the_dead_and_stops_on_sigterm(impl):
    proc = subprocess.Popen([sys.executable, "-c", POOL, impl], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        port = int(proc.stdout.readline())
        seen = workers_seen(port)
        victim = seen[0]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while victim in children(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.001)  # (what the victim itself had accepted dies with it)
        replaced = {}
        while (len(replaced) < 2 or replaced.get(0) == victim) and time.monotonic() < deadline:
            index, pid = ask(port)  # once it is reaped every connection is answered, none reset
            replaced[index] = pid
        assert replaced.get(0) not in (None, victim) and replaced.get(1) == seen[1], (seen, replaced)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-2000:]
    assert "worker 0" in err and "died (signal 9)" in err and "starting a new one" in err
    time.sleep(0.1)
    assert not any(alive(p) for p in list(seen.values()) + list(replaced.values())), "a worker outlived the pool"
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2)


@pytest.mark.parametrize("impl", available_impls())
def test_connections_waiting_for_a_dead_worker_are_served_by_its_replacement(impl):
    """A worker killed with connections in its listener's backlog: the replacement answers them all."""
    proc = subprocess.Popen([sys.executable, "-c", POOL, impl], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    clients = []
    try:
        port = int(proc.stdout.readline())
        seen = workers_seen(port)
        victim = seen[0]
        os.kill(victim, signal.SIGSTOP)        # it accepts nothing more: its share waits in its backlog
        deadline = time.monotonic() + 10
        while state(victim) != "T" and time.monotonic() < deadline:
            time.sleep(0.01)                   # kill() returns before the worker has stopped
        assert state(victim) == "T"
        for _ in range(24):
            c = socket.create_connection(("127.0.0.1", port), timeout=10)
            c.sendall(b"who")
            clients.append(c)
        time.sleep(0.3)
        waiting = []
        for c in clients:
            c.setblocking(False)
            try:
                answered = c.recv(100)
            except BlockingIOError:
                waiting.append(c)
                continue
            assert answered.startswith(b"1 "), answered
        assert waiting, "no connection was hashed to the stopped worker"
        os.kill(victim, signal.SIGKILL)
        for c in waiting:
            c.settimeout(10)
            line = c.recv(100)                 # ConnectionResetError if the backlog died with the worker
            index, pid = line.split()
            assert int(index) == 0 and int(pid) != victim, line
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        for c in clients:
            c.close()
        proc.kill()
    assert proc.returncode == 0, err[-2000:]


def test_pool_argument_checks():
    with pytest.raises(ValueError, match="workers"):
        WorkerPool(0, lambda listener, i: None)
    with pytest.raises(ValueError, match="workers"):
        WorkerPool(True, lambda listener, i: None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="callable"):
        WorkerPool(2, "serve")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="SockOpts"):
        WorkerPool(2, lambda listener, i: None, opts={"reuseport": True})  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        WorkerPool(2, lambda listener, i: None, "not a host!", 0)
    with WorkerPool(2, lambda listener, i: None) as pool:
        assert pool.port > 0 and "workers=2" in repr(pool)
        port = pool.port
    # closed: the port is free again, even for a socket without SO_REUSEPORT
    with socket.create_server(("127.0.0.1", port)):
        pass
    pool.close()  # idempotent


def test_a_worker_that_dies_at_once_stops_the_pool_instead_of_forking_forever():
    code = textwrap.dedent("""
        import sys
        import netimpl.workers as w
        w.MAX_RESTARTS = 3
        def target(listener, index):
            raise RuntimeError("broken worker")
        sys.exit(w.WorkerPool(2, target).serve())
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "stopping the pool" in out.stderr, out.stderr[-2000:]
    assert netimpl  # the pool is part of the library's import


def test_workers_die_with_a_pool_killed_by_sigkill():
    proc = subprocess.Popen([sys.executable, "-c", POOL, "posix"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        port = int(proc.stdout.readline())
        pids = set()
        deadline = time.monotonic() + 10
        while len(pids) < 2 and time.monotonic() < deadline:
            pids.add(ask(port)[1])
        assert len(pids) == 2
        proc.kill()                          # SIGKILL: the pool cannot stop its workers itself
        proc.wait(10)
        deadline = time.monotonic() + 5
        while any(alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(alive(p) for p in pids), "workers outlived a pool killed with SIGKILL"
    finally:
        proc.kill()
        for p in pids:
            if alive(p):
                os.kill(p, signal.SIGKILL)
