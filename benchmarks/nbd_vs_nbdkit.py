"""fio's nbd engine against ``python -m netimpl.nbd`` (each backend) and ``nbdkit memory``, in one run.

    python benchmarks/nbd_vs_nbdkit.py [--rounds 3] [--seconds 5] [--quick] [--only JOB] [--impl NAME] [--json FILE]
    python benchmarks/nbd_vs_nbdkit.py --scaling [...]        # 1 and 2 workers beside nbdkit's threads
    python benchmarks/nbd_vs_nbdkit.py --tls DIR [...]        # each server over TLS too (DIR: nbdkit's layout)

Every server runs pinned to CPU 1 and fio to CPU 0. Each server gets the
same 1 GiB memory export, prefilled over the 256 MiB that the jobs touch.
Contenders are alternated within every round (A B C, A B C, ...) and the
table gives medians over the rounds of:

- IOPS and MiB/s, fio's p50 / p99 completion latency (µs);
- **server CPU µs per I/O**: the server process's user + system time
  (``/proc/PID/stat``, every thread, exited ones included) over the run,
  divided by the I/Os fio completed. It does not depend on fio, which
  itself takes a whole core at 4k QD32.

``--scaling`` measures across cores instead: 4k randread QD32 with 4 fio
jobs (4 connections) against ``--workers 1`` and ``--workers 2`` of the
default backend and ``nbdkit memory`` with its default threads, nothing
pinned (the servers may use both cores; fio shares them, so on a 2-core
machine the load generator is a limit, and the table says how much CPU it
took). Server CPU then counts every worker process.

``--tls DIR`` adds each server once more with ``--tls=require
--tls-certificates DIR`` (fio connects with ``nbds://...?tls-certificates=DIR``).

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


def _cpu_of(pid: int) -> float:
    """utime + stime of ``pid`` (every thread) and of its children still running, in seconds."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            children = [int(c) for c in f.read().split()]
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK + sum(_cpu_of(c) for c in children)


class Server:
    def __init__(self, name: str, argv: list[str], port: int, pin: bool = True, tls_dir: str | None = None) -> None:
        self.name, self.port = name, port
        self.proc = subprocess.Popen((["taskset", "-c", SERVER_CPU] if pin else []) + argv,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wait_listening(port, self.proc)
        # fio's libnbd refuses a tls-certificates file in the URI; it finds the CA in $HOME/.pki/libnbd
        self.uri = f"nbds://localhost:{port}/" if tls_dir else f"nbd://127.0.0.1:{port}"

    def cpu_seconds(self) -> float:
        return _cpu_of(self.proc.pid)                              # the workers of --workers too

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _netimpl(name: str, impl: str, *extra: str, pin: bool = True, tls_dir: str | None = None) -> Server:
    port = free_port()
    tls = ["--tls=require", "--tls-certificates", tls_dir] if tls_dir else []
    return Server(name, [sys.executable, "-m", "netimpl.nbd", "--size", "1G", "--host", "127.0.0.1", "--port",
                         str(port), "--impl", impl, *tls, *extra], port, pin=pin, tls_dir=tls_dir)


def _nbdkit(name: str, pin: bool = True, tls_dir: str | None = None) -> Server:
    port = free_port()
    tls = ["--tls=require", f"--tls-certificates={tls_dir}"] if tls_dir else []
    return Server(name, ["nbdkit", "--foreground", "--exit-with-parent", "-i", "127.0.0.1", "-p", str(port), *tls,
                         "memory", "1G"], port, pin=pin, tls_dir=tls_dir)


def start_servers(impls: list[str], tls_dir: str | None = None) -> list[Server]:
    servers = [_netimpl(f"netimpl {impl}", impl) for impl in impls]
    servers.append(_nbdkit(BASE))
    if tls_dir:
        servers += [_netimpl(f"netimpl {impl} TLS", impl, tls_dir=tls_dir) for impl in impls]
        servers.append(_nbdkit("nbdkit TLS", tls_dir=tls_dir))
    return servers


def start_scaling(impl: str) -> list[Server]:
    return [_netimpl(f"netimpl {impl} x1", impl, "--workers", "1", pin=False),
            _netimpl(f"netimpl {impl} x2", impl, "--workers", "2", pin=False),
            _nbdkit(BASE, pin=False)]


BASE = "nbdkit memory"
FIO_ENV: dict[str, str] | None = None  # with --tls: a HOME whose .pki/libnbd holds the client's certificates


def tls_home(certdir: str) -> dict[str, str]:
    """An environment whose $HOME/.pki/libnbd holds ``certdir``'s CA (and client certificate, if any)."""
    import tempfile

    home = tempfile.mkdtemp(prefix="nbd-bench-home-")
    pki = os.path.join(home, ".pki", "libnbd")
    os.makedirs(pki)
    for name in ("ca-cert.pem", "client-cert.pem", "client-key.pem"):
        if os.path.exists(os.path.join(certdir, name)):
            shutil.copy(os.path.join(certdir, name), pki)
    return {**os.environ, "HOME": home}


def fio(uri: str, rw: str, bs: str, qd: int, seconds: float | None, jobs: int = 1, pin: bool = True) -> dict:
    argv = (["taskset", "-c", CLIENT_CPU] if pin else []) + [
        "fio", "--output-format=json", "--name=job", "--ioengine=nbd", f"--uri={uri}", f"--rw={rw}", f"--bs={bs}",
        f"--iodepth={qd}", f"--size={AREA}", f"--numjobs={jobs}", "--group_reporting"]
    if seconds:
        argv += ["--time_based", f"--runtime={seconds}"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=FIO_ENV)
    if out.returncode != 0:
        raise SystemExit(f"fio failed against {uri}: {out.stderr}")
    (job,) = json.loads(out.stdout[out.stdout.index("{"):])["jobs"]
    if job["error"]:
        raise SystemExit(f"fio reported error {job['error']} against {uri}")
    return job["read" if "read" in rw else "write"]


def measure(server: Server, rw: str, bs: str, qd: int, seconds: float, jobs: int = 1, pin: bool = True) -> dict:
    before = server.cpu_seconds()
    r = fio(server.uri, rw, bs, qd, seconds, jobs, pin)
    cpu = server.cpu_seconds() - before
    pct = r["clat_ns"]["percentile"]
    return {"iops": r["iops"], "mib_s": r["bw_bytes"] / (1 << 20), "p50_us": pct["50.000000"] / 1e3,
            "p99_us": pct["99.000000"] / 1e3, "cpu_us_per_io": cpu * 1e6 / max(r["total_ios"], 1),
            "server_cpu_pct": cpu / seconds * 100}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=5.0, help="per fio run")
    p.add_argument("--quick", action="store_true", help="1 round of 2 s")
    p.add_argument("--impl", action="append", help="netimpl backends (default: every available one)")
    p.add_argument("--only", metavar="TEXT", help="run only the jobs whose name contains TEXT")
    p.add_argument("--json", metavar="FILE")
    p.add_argument("--scaling", action="store_true",
                   help="4k randread QD32 x 4 fio jobs against --workers 1 and 2 and nbdkit, nothing pinned")
    p.add_argument("--tls", metavar="DIR", help="each server over TLS too (certificates in nbdkit's layout)")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.seconds = 1, 2.0
    if args.rounds < 1 or args.seconds <= 0:
        p.error("--rounds must be >= 1 and --seconds > 0")
    for tool in ("fio", "nbdkit", "taskset"):
        if not shutil.which(tool):
            p.error(f"{tool} is not installed (Debian: apt-get install fio nbdkit util-linux)")
    impls = args.impl or [i.name for i in netimpl.impls() if i.available]

    global FIO_ENV
    if args.tls:
        FIO_ENV = tls_home(args.tls)
    if args.scaling:
        servers = start_scaling(netimpl.default_impl() if not args.impl else impls[0])
        jobs = [("4k randread QD32 x4 jobs", "randread", "4k", 32)]
        fio_jobs, pin = 4, False
    else:
        servers = start_servers(impls, args.tls)
        jobs, fio_jobs, pin = JOBS, 1, True
    results: dict[str, dict[str, list[dict]]] = {}
    try:
        for s in servers:                                     # same data behind every server
            fio(s.uri, "write", "128k", 8, None)
        for name, rw, bs, qd in jobs:
            if args.only and args.only not in name:
                continue
            for rnd in range(args.rounds):
                order = servers if rnd % 2 == 0 else servers[::-1]
                for s in order:
                    m = measure(s, rw, bs, qd, args.seconds, fio_jobs, pin)
                    results.setdefault(name, {}).setdefault(s.name, []).append(m)
                    print(f"  {name:20s} {s.name:16s} round {rnd + 1}: {m['iops']:9.0f} IOPS "
                          f"{m['cpu_us_per_io']:6.2f} µs CPU/IO", file=sys.stderr, flush=True)
    finally:
        for s in servers:
            s.stop()

    medians = {job: {srv: {k: statistics.median(r[k] for r in runs) for k in runs[0]}
                     for srv, runs in by_server.items()} for job, by_server in results.items()}
    where = ("nothing pinned, 4 fio jobs" if args.scaling else f"server on CPU {SERVER_CPU}, fio on CPU {CLIENT_CPU}")
    print(f"\nmedians of {args.rounds} x {args.seconds:g} s; {where}; ratios against nbdkit in brackets")
    print(f"{'job':24s} {'server':20s} {'IOPS':>16s} {'MiB/s':>8s} {'p50/p99 µs':>14s} {'CPU µs/IO':>16s} "
          f"{'server CPU %':>12s}")
    for job, by_server in medians.items():
        for srv, m in by_server.items():
            base = by_server["nbdkit TLS" if srv.endswith("TLS") and "nbdkit TLS" in by_server else BASE]
            mine = srv not in (BASE, "nbdkit TLS")
            iops = f"{m['iops']:.0f}" + (f" ({m['iops'] / base['iops']:.2f}x)" if mine else "")
            cpu = f"{m['cpu_us_per_io']:.2f}" + (f" ({m['cpu_us_per_io'] / base['cpu_us_per_io']:.2f}x)"
                                                 if mine else "")
            print(f"{job:24s} {srv:20s} {iops:>16s} {m['mib_s']:8.0f} "
                  f"{m['p50_us']:6.0f}/{m['p99_us']:<7.0f} {cpu:>16s} {m['server_cpu_pct']:11.0f}%")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"schema": 1, "rounds": args.rounds, "seconds": args.seconds, "medians": medians,
                       "runs": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
