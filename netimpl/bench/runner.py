"""Running one contender on one workload: a server process, the load generator, the figures."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

from .loadgen import LoadGen
from .workloads import Workload

SERVER_CPU = 1
LOADGEN_CPU = 0


@dataclass
class Timing:
    warmup: float
    seconds: float
    syscalls: bool = False   # count the server's system calls with perf during the window


def _perf(pid: int) -> subprocess.Popen | None:
    if not shutil.which("perf"):
        return None
    return subprocess.Popen(["perf", "stat", "-x,", "-e", "raw_syscalls:sys_enter", "-p", str(pid)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _perf_count(perf: subprocess.Popen | None) -> int | None:
    if perf is None:
        return None
    perf.send_signal(signal.SIGINT)
    err = perf.communicate(timeout=10)[1]
    for line in err.splitlines():
        field = line.split(",")[0]
        if "raw_syscalls:sys_enter" in line and field.isdigit():
            return int(field)
    return None


def _percentile(sorted_ns: list[int], q: float) -> float:
    if not sorted_ns:
        return float("nan")
    k = min(len(sorted_ns) - 1, int(q * len(sorted_ns)))
    return sorted_ns[k] / 1000.0


def run(contender: str, w: Workload, timing: Timing) -> dict:
    """One measured window of ``w`` against ``contender``: a dict of figures."""
    ncpu = os.cpu_count() or 1
    env = {**os.environ, "NETIMPL_BENCH_CPU": str(SERVER_CPU % ncpu)}
    args = [str(w.req), str(w.resp)] if w.mode == "rr" else [str(w.chunk)]
    server = subprocess.Popen([sys.executable, "-m", "netimpl.bench.servers", contender, w.mode, *args],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert server.stdout is not None and server.stderr is not None
    try:
        line = server.stdout.readline()
        if not line.strip().isdigit():
            raise RuntimeError(f"{contender} server did not start: {line}{server.stderr.read()[-2000:]}")
        port = int(line)
        os.sched_setaffinity(0, {LOADGEN_CPU % ncpu})
        try:
            if w.mode == "bulk":
                lg = LoadGen("127.0.0.1", port, sink=True)
            else:
                lg = LoadGen("127.0.0.1", port, conns=w.conns, depth=w.depth, active=w.active,
                             req_size=w.req, resp_size=w.resp)
            with lg:
                lg.run(timing.warmup)
                perf = _perf(server.pid) if timing.syscalls else None
                if perf is not None:
                    time.sleep(0.1)  # perf attaches
                server.send_signal(signal.SIGUSR1)
                win = lg.run(timing.seconds, latencies=w.latency)
                server.send_signal(signal.SIGUSR1)
                syscalls = _perf_count(perf)
                time.sleep(0.02)  # let the server take the second mark before the connections go
        finally:
            os.sched_setaffinity(0, range(ncpu))
        server.send_signal(signal.SIGTERM)
        out, err = server.communicate(timeout=30)
        marks = json.loads(out.strip().splitlines()[-1])
        if len(marks) < 2:
            raise RuntimeError(f"{contender} server missed its CPU marks: {err[-2000:]}")
        user = marks[1][0] - marks[0][0]
        cpu = user + marks[1][1] - marks[0][1]
    except BaseException:
        server.kill()
        server.wait()
        raise
    ops = win.bytes_in / w.chunk if w.mode == "bulk" else win.responses
    lats = sorted(win.latencies_ns)
    if w.mode == "bulk":
        res = {"gbps": win.bytes_in / win.seconds / 1e9}
    else:
        res = {"rps": win.responses / win.seconds}
    res["cpu_us"] = cpu / ops * 1e6 if ops else float("nan")
    res["user_us"] = user / ops * 1e6 if ops else float("nan")
    if syscalls is not None and ops:
        res["syscalls_per_op"] = syscalls / ops
    if w.latency:
        res["p50_us"] = _percentile(lats, 0.50)
        res["p99_us"] = _percentile(lats, 0.99)
    return res
