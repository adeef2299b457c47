"""fio's nbd engine against ``python -m netimpl.nbd`` (each backend) and ``nbdkit memory``, in one run.

    python benchmarks/nbd_vs_nbdkit.py [--rounds 3] [--seconds 5] [--quick] [--only JOB] [--impl NAME] [--json FILE]

Every server runs pinned to CPU 1 and fio to CPU 0. Each server gets the
same 1 GiB memory export, prefilled over the 256 MiB that the jobs touch.
Contenders are alternated within every round (A B C, A B C, ...) and the
table gives medians over the rounds of:

- IOPS and MiB/s, fio's p50 / p99 completion latency (µs);
- **server CPU µs per I/O**: the server process's user + system time
  (``/proc/PID/stat``, every thread, exited ones included) over the run,
  divided by the I/Os fio completed. It does not depend on fio, which
  itself takes a whole core at 4k QD32.

Needs fio and nbdkit (Debian: fio, nbdkit). Not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time

import netimpl

CLK_TCK = os.sysconf("SC_CLK_TCK")
SERVER_CPU, CLIENT_CPU = "1", "0"
AREA = "256M"

JOBS = [  # name, rw, block size, queue depth
    ("4k randread QD1", "randread", "4k", 1),
    ("4k randread QD32", "randread", "4k", 32),
    ("4k randwrite QD32", "randwrite", "4k", 32),
    ("128k seq read QD8", "read", "128k", 8),
    ("128k seq write QD8", "write", "128k", 8),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, proc: subprocess.Popen, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode} before listening on {port}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on port {port} after {timeout} s")


class Server:
    def __init__(self, name: str, argv: list[str], port: int) -> None:
        self.name, self.port = name, port
        self.proc = subprocess.Popen(["taskset", "-c", SERVER_CPU, *argv], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        wait_listening(port, self.proc)
        self.uri = f"nbd://127.0.0.1:{port}"

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK      # utime, stime (fields 14, 15)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_servers(impls: list[str]) -> list[Server]:
    servers = []
    for impl in impls:
        port = free_port()
        servers.append(Server(f"netimpl {impl}", [sys.executable, "-m", "netimpl.nbd", "--size", "1G", "--host",
                                                  "127.0.0.1", "--port", str(port), "--impl", impl], port))
    port = free_port()
    servers.append(Server("nbdkit memory", ["nbdkit", "--foreground", "--exit-with-parent", "-i", "127.0.0.1",
                                            "-p", str(port), "memory", "1G"], port))
    return servers


def fio(uri: str, rw: str, bs: str, qd: int, seconds: float | None) -> dict:
    argv = ["taskset", "-c", CLIENT_CPU, "fio", "--output-format=json", "--name=job", "--ioengine=nbd",
            f"--uri={uri}", f"--rw={rw}", f"--bs={bs}", f"--iodepth={qd}", f"--size={AREA}"]
    if seconds:
        argv += ["--time_based", f"--runtime={seconds}"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise SystemExit(f"fio failed against {uri}: {out.stderr}")
    (job,) = json.loads(out.stdout[out.stdout.index("{"):])["jobs"]
    if job["error"]:
        raise SystemExit(f"fio reported error {job['error']} against {uri}")
    return job["read" if "read" in rw else "write"]


def measure(server: Server, rw: str, bs: str, qd: int, seconds: float) -> dict:
    before = server.cpu_seconds()
    r = fio(server.uri, rw, bs, qd, seconds)
    cpu = server.cpu_seconds() - before
    pct = r["clat_ns"]["percentile"]
    return {"iops": r["iops"], "mib_s": r["bw_bytes"] / (1 << 20), "p50_us": pct["50.000000"] / 1e3,
            "p99_us": pct["99.000000"] / 1e3, "cpu_us_per_io": cpu * 1e6 / max(r["total_ios"], 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=5.0, help="per fio run")
    p.add_argument("--quick", action="store_true", help="1 round of 2 s")
    p.add_argument("--impl", action="append", help="netimpl backends (default: every available one)")
    p.add_argument("--only", metavar="TEXT", help="run only the jobs whose name contains TEXT")
    p.add_argument("--json", metavar="FILE")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.seconds = 1, 2.0
    if args.rounds < 1 or args.seconds <= 0:
        p.error("--rounds must be >= 1 and --seconds > 0")
    for tool in ("fio", "nbdkit", "taskset"):
        if not shutil.which(tool):
            p.error(f"{tool} is not installed (Debian: apt-get install fio nbdkit util-linux)")
    impls = args.impl or [i.name for i in netimpl.impls() if i.available]

    servers = start_servers(impls)
    results: dict[str, dict[str, list[dict]]] = {}
    try:
        for s in servers:                                     # same data behind every server
            fio(s.uri, "write", "128k", 8, None)
        for name, rw, bs, qd in JOBS:
            if args.only and args.only not in name:
                continue
            for rnd in range(args.rounds):
                order = servers if rnd % 2 == 0 else servers[::-1]
                for s in order:
                    m = measure(s, rw, bs, qd, args.seconds)
                    results.setdefault(name, {}).setdefault(s.name, []).append(m)
                    print(f"  {name:20s} {s.name:16s} round {rnd + 1}: {m['iops']:9.0f} IOPS "
                          f"{m['cpu_us_per_io']:6.2f} µs CPU/IO", file=sys.stderr, flush=True)
    finally:
        for s in servers:
            s.stop()

    medians = {job: {srv: {k: statistics.median(r[k] for r in runs) for k in runs[0]}
                     for srv, runs in by_server.items()} for job, by_server in results.items()}
    print(f"\nmedians of {args.rounds} x {args.seconds:g} s; server on CPU {SERVER_CPU}, fio on CPU {CLIENT_CPU}; "
          "ratios against nbdkit in brackets")
    print(f"{'job':20s} {'server':16s} {'IOPS':>16s} {'MiB/s':>8s} {'p50/p99 µs':>14s} {'CPU µs/IO':>16s}")
    for job, by_server in medians.items():
        base = by_server["nbdkit memory"]
        for srv, m in by_server.items():
            iops = f"{m['iops']:.0f}" + (f" ({m['iops'] / base['iops']:.2f}x)" if srv != "nbdkit memory" else "")
            cpu = f"{m['cpu_us_per_io']:.2f}" + (f" ({m['cpu_us_per_io'] / base['cpu_us_per_io']:.2f}x)"
                                                 if srv != "nbdkit memory" else "")
            print(f"{job:20s} {srv:16s} {iops:>16s} {m['mib_s']:8.0f} "
                  f"{m['p50_us']:6.0f}/{m['p99_us']:<7.0f} {cpu:>16s}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"schema": 1, "rounds": args.rounds, "seconds": args.seconds, "medians": medians,
                       "runs": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
