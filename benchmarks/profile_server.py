"""Profile one bench server under load: where does its CPU per request go?

    python benchmarks/profile_server.py [CONTENDER] [WORKLOAD] [SECONDS]

e.g. ``netimpl:posix read-16x32 3``. The server runs in this process under
cProfile, pinned to CPU 1; the C load generator runs in a child on CPU 0.
Contenders: ``netimpl:<backend>`` and ``netimpl-aio:<backend>`` (any
available backend; the second inside an asyncio loop), ``asyncio``,
``uvloop`` (if installed) and ``blocking``, whose connection threads are
profiled each on its own and reported together. The floors, ``c-epoll`` and
``c-uring``, are C: profile them with ``perf`` instead.
"""

from __future__ import annotations

import argparse
import cProfile
import importlib.util
import os
import pstats
import signal
import sys
import threading
import time
from collections.abc import Callable

import netimpl
from netimpl.bench import servers
from netimpl.bench.loadgen import LoadGen, unavailable_reason
from netimpl.bench.report import FLOOR, URING_FLOOR
from netimpl.bench.workloads import BY_NAME

PROG = "benchmarks/profile_server.py"


def contenders() -> dict[str, str]:
    """Every contender name this script knows -> '' if it can be profiled here, else why not."""
    out = {f"netimpl:{i.name}": i.reason for i in netimpl.impls()}
    out |= {f"netimpl-aio:{i.name}": i.reason for i in netimpl.impls()}
    for floor in (FLOOR, URING_FLOOR):
        out[floor] = "a C server: cProfile sees none of its work (perf record -p PID shows it)"
    out["asyncio"] = ""
    out["uvloop"] = "" if importlib.util.find_spec("uvloop") else "uvloop is not installed (the bench extra)"
    out["blocking"] = ""
    return out


def parse(argv: list[str]) -> argparse.Namespace:
    known = contenders()
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("contender", nargs="?", default="netimpl:posix",
                   help=f"one of {', '.join(known)} (default netimpl:posix)")
    p.add_argument("workload", nargs="?", default="read-16x32", choices=list(BY_NAME), metavar="WORKLOAD",
                   help=f"one of {', '.join(BY_NAME)} (default read-16x32)")
    p.add_argument("seconds", nargs="?", type=float, default=3.0, help="seconds under load (default 3)")
    p.add_argument("--lines", type=int, default=22, help="functions to list, by own time (default 22)")
    args = p.parse_args(argv)
    if args.contender not in known:
        p.error(f"unknown contender {args.contender!r} (known: {', '.join(known)})")
    if known[args.contender]:
        print(f"{PROG}: {args.contender} cannot be profiled here: {known[args.contender]}", file=sys.stderr)
        sys.exit(1)
    if args.seconds <= 0 or args.lines <= 0:
        p.error("SECONDS and --lines must be positive")
    reason = unavailable_reason()
    if reason:
        print(f"{PROG}: {reason}", file=sys.stderr)
        sys.exit(1)
    return args


def profile_threads(finished: list[cProfile.Profile], started: list[threading.Thread]) -> Callable[[], None]:
    """Give every thread started from now on a profiler of its own, kept once the thread ends.

    cProfile follows only the thread that enabled it; the blocking server does
    its work in a thread per connection. Returns the function that undoes this.
    """
    original = threading.Thread.run

    def run(self: threading.Thread) -> None:
        started.append(self)
        prof = cProfile.Profile()
        prof.enable()
        try:
            original(self)
        finally:
            prof.disable()
            finished.append(prof)

    threading.Thread.run = run  # type: ignore[method-assign]

    def undo() -> None:
        threading.Thread.run = original  # type: ignore[method-assign]

    return undo


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    w = BY_NAME[args.workload]
    r, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(wfd)
        port = int(os.read(r, 64))
        os.sched_setaffinity(0, {0})
        if w.mode == "bulk":
            lg = LoadGen("127.0.0.1", port, sink=True)
        else:
            lg = LoadGen("127.0.0.1", port, conns=w.conns, depth=w.depth, active=w.active,
                         req_size=w.req, resp_size=w.resp)
        win = lg.run(args.seconds)
        os.kill(os.getppid(), signal.SIGTERM)
        print(f"load generator: {win.responses / win.seconds:.0f} responses/s, "
              f"{win.bytes_in / win.seconds / 1e9:.2f} GB/s in", file=sys.stderr)
        os._exit(0)
    os.close(r)
    os.sched_setaffinity(0, {1 % (os.cpu_count() or 1)})
    servers.announce = lambda port: os.write(wfd, str(port).encode())
    servers.finish = lambda: None
    a, b = (w.req, w.resp) if w.mode == "rr" else (w.chunk, 0)
    finished: list[cProfile.Profile] = []
    threads: list[threading.Thread] = []
    prof = cProfile.Profile()
    prof.enable()
    if args.contender.startswith("netimpl:"):
        servers.serve_netimpl(args.contender.split(":", 1)[1], w.mode, a, b)
    elif args.contender.startswith("netimpl-aio:"):
        servers.serve_netimpl(args.contender.split(":", 1)[1], w.mode, a, b, aio=True)
    elif args.contender == "blocking":
        profile_threads(finished, threads)
        servers.serve_blocking(w.mode, a, b)
    else:
        servers.serve_asyncio(args.contender, w.mode, a, b)
    prof.disable()
    os.waitpid(pid, 0)
    deadline = time.monotonic() + 2.0  # connection threads end once the load generator's sockets close
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    stats = pstats.Stats(prof)
    for p in finished:
        stats.add(p)
    if threads:
        print(f"{len(finished)} of {len(threads)} threads profiled (the others were still running)")
    stats.sort_stats("tottime").print_stats(args.lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
