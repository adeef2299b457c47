"""``python -m netimpl bench``: every backend beside asyncio, uvloop and plain sockets, in one run.

Each workload runs against each contender, alternately, for ``--rounds``
rounds; every server runs in its own process pinned to CPU 1 and is driven
by the same load generator, a small C program built through cffi pinned to
CPU 0, so that the client is never what is measured. For every row it
reports throughput and the server's CPU time per operation (getrusage of
the server), the figure that does not depend on the client, each with its
ratio to asyncio, and the CPU time also as a multiple of the floor's:
``c-epoll``, a plain C epoll server doing the same work (``floor.c``).
``c-uring`` is the floor of the io_uring design: a plain C server making
the kernel calls netimpl's uring backend makes (``floor_uring.c``), so
that "uring against posix" can be read against "c-uring against c-epoll".
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
import time
from typing import IO

from .. import _cli
from . import floor, loadgen, report, runner
from .workloads import BY_NAME, WORKLOADS

__all__ = ["contenders", "main", "unavailable"]


def unavailable() -> list[str]:
    """One sentence for each contender that cannot run here (other than netimpl backends, which ``info`` lists)."""
    if floor.lib is None:  # one module holds both
        return [f"{report.FLOOR} and {report.URING_FLOOR} are unavailable: {floor.unavailable()}."]
    out = []
    for name, kind in ((report.FLOOR, "epoll"), (report.URING_FLOOR, "uring")):
        reason = floor.unavailable(kind)
        if reason:
            out.append(f"{name} is unavailable: {reason}.")
    return out


def contenders(impl: str | None = None) -> list[str]:
    """Every contender available here, the floor first; ``impl`` keeps one netimpl backend only.

    An unknown ``impl`` raises ``ValueError``, an unavailable one
    :class:`netimpl.NetImplError` saying why.
    """
    import netimpl
    from netimpl.registry import get

    if impl is not None:
        get(impl)
    out = [name for name, kind in ((report.FLOOR, "epoll"), (report.URING_FLOOR, "uring"))
           if not floor.unavailable(kind)]
    ours = [f"netimpl:{i.name}" for i in netimpl.impls() if i.available and (impl is None or i.name == impl)]
    out += ours
    if ours:  # the default backend (or the one asked for) once more inside an asyncio loop, and reading by recv_next
        best = impl or netimpl.default_impl()
        best = best if f"netimpl:{best}" in ours else ours[0].split(":", 1)[1]
        out += [f"netimpl-aio:{best}", f"netimpl-next:{best}"]
    out.append("asyncio")
    if importlib.util.find_spec("uvloop") is not None:
        out.append("uvloop")
    out.append("blocking")
    return out


class _Progress:
    """A bar redrawn in place on a terminal; elsewhere (a CI log, a file) one line per workload."""

    def __init__(self, total: int, out: IO[str]) -> None:
        self.total, self.out, self.started = total, out, time.monotonic()
        self.tty = out.isatty()
        self.workload = ""

    def _eta(self, done: int) -> float:
        return (time.monotonic() - self.started) / done * (self.total - done) if done else 0.0

    def step(self, done: int, workload: str, contender: str) -> None:
        if self.tty:
            width = 30
            filled = int(width * done / self.total) if self.total else width
            label = f"{workload} {contender}"
            self.out.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{self.total} {label:32.32s} "
                           f"eta {self._eta(done):4.0f}s")
        elif workload != self.workload:
            eta = f", eta {self._eta(done):.0f} s" if done else ""
            self.out.write(f"[{done}/{self.total} runs] {workload}{eta}\n")
        self.workload = workload
        self.out.flush()

    def finish(self) -> None:
        elapsed = time.monotonic() - self.started
        if self.tty:
            width = 30
            self.out.write(f"\r[{'#' * width}] {self.total}/{self.total} {'done':32s} in {elapsed:4.0f}s\n")
        else:
            self.out.write(f"[{self.total}/{self.total} runs] done in {elapsed:.0f} s\n")
        self.out.flush()


def main(argv: list[str] | None = None, prog: str = "python -m netimpl bench") -> int:
    p = argparse.ArgumentParser(prog=prog, description=_cli.sentence(__doc__))
    p.add_argument("--quick", action="store_true", help="short windows, one round: under a minute")
    p.add_argument("--only", action="append", choices=[w.name for w in WORKLOADS], metavar="WORKLOAD",
                   help=f"run only this workload (repeatable): {', '.join(w.name for w in WORKLOADS)}")
    p.add_argument("--impl", help="netimpl backend to run (default: every available one)")
    p.add_argument("--rounds", type=int, help="rounds of every contender (default 3, quick 1)")
    p.add_argument("--seconds", type=float, help="measured seconds per run (default 2, quick 0.25)")
    p.add_argument("--syscalls", action="store_true", help="also count the server's system calls per op (needs perf)")
    p.add_argument("--json", metavar="FILE", help="write every figure to FILE")
    p.add_argument("--plot", metavar="FILE.png", help="draw the figures (needs matplotlib: the bench extra)")
    args = p.parse_args(argv)
    rounds = args.rounds if args.rounds is not None else (1 if args.quick else 3)
    seconds = args.seconds if args.seconds is not None else (0.25 if args.quick else 2.0)
    if rounds <= 0 or seconds <= 0:
        p.error("--rounds and --seconds must be positive")
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        p.error("--plot needs matplotlib: pip install 'netimpl[bench]'")
    for flag, path in (("--json", args.json), ("--plot", args.plot)):
        # checked before a run of minutes, not after it
        if path and not os.access(os.path.dirname(os.path.abspath(path)), os.W_OK):
            p.error(f"{flag} {path}: cannot write into {os.path.dirname(os.path.abspath(path))!r}")
    if args.syscalls and shutil.which("perf") is None:
        p.error("--syscalls needs perf (Debian: linux-perf) on PATH")
    if args.impl is not None:
        _cli.backend(args.impl)
    reason = loadgen.unavailable_reason()
    if reason:
        raise _cli.CommandError(reason)
    timing = runner.Timing(warmup=0.1 if args.quick else 0.5, seconds=seconds, syscalls=args.syscalls)
    workloads = [BY_NAME[n] for n in args.only] if args.only else list(WORKLOADS)
    names = contenders(args.impl)
    results: dict[str, dict[str, list[dict]]] = {w.name: {c: [] for c in names} for w in workloads}
    total = len(workloads) * len(names) * rounds
    done = 0
    print(f"contenders: {', '.join(names)}; {rounds} round(s) of {seconds:g} s each, alternating; "
          f"server on CPU {runner.SERVER_CPU}, C load generator on CPU {runner.LOADGEN_CPU}", flush=True)
    for sentence in unavailable():
        print(sentence, flush=True)
    progress = _Progress(total, sys.stderr)
    for w in workloads:
        for _ in range(rounds):
            for c in names:
                progress.step(done, w.name, c)
                results[w.name][c].append(runner.run(c, w, timing))
                done += 1
    progress.finish()
    report.table(results, workloads, names, sys.stdout)
    print(file=sys.stdout)
    report.summary(results, workloads, names, sys.stdout)
    config = {"rounds": rounds, "seconds": seconds, "quick": args.quick}
    if args.syscalls:
        config["syscalls"] = True
    doc = report.to_json(results, workloads, names, config)
    if args.json:
        report.write_json(args.json, doc)
        print(f"\nfigures written to {args.json}")
    if args.plot:
        report.plot(args.plot, doc)
        print(f"plot written to {args.plot}")
    return 0
