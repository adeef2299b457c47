"""``python -m netimpl demo``: an echo round trip and a bulk transfer beside plain sockets.

The bulk transfer streams ``--size`` bytes over loopback, once with netimpl's
``writev_async`` (1 MiB requests, 8 in flight, flushed by a SockGroup) and
once with a blocking ``sendall`` loop, alternately, ``--runs`` times each,
to a receiver in its own process pinned to another core. It prints the
median GB/s of each, measured at the receiver, and their ratio.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import socket
import statistics
import sys
import time
from collections.abc import Callable

import netimpl

from . import _cli

MiB = 1 << 20


def _pin(cpu: int) -> None:
    try:
        if cpu < os.cpu_count():  # type: ignore[operator]
            os.sched_setaffinity(0, {cpu})
    except (AttributeError, OSError):
        pass


def _receiver(conn, cpu: int) -> None:
    """Accept one connection per run, read to EOF, report (bytes, seconds from first byte)."""
    _pin(cpu)
    ls = socket.create_server(("127.0.0.1", 0))
    conn.send(ls.getsockname()[1])
    buf = bytearray(4 * MiB)
    while conn.recv() == "go":
        s, _ = ls.accept()
        n = s.recv_into(buf)
        t0 = time.perf_counter()
        total = n
        while n:
            n = s.recv_into(buf)
            total += n
        conn.send((total, time.perf_counter() - t0))
        s.close()
    ls.close()


def _send_netimpl(port: int, size: int, impl: str | None) -> None:
    sock = netimpl.connect("127.0.0.1", port, impl=impl)
    group = netimpl.SockGroup()
    group.add_sock(sock, lambda g, s: None)
    chunk = bytes(MiB)
    free = [netimpl.Request([chunk]) for _ in range(8)]
    done = free.append
    for req in free:
        req.cb = lambda r, status: done(r)
    left = size
    while left > 0 or len(free) < 8:
        while free and left > 0:
            sock.writev_async(free.pop())
            left -= MiB
        group.poll(timeout=0.05)
    group.remove_sock(sock)
    group.close()
    sock.close()


def _send_plain(port: int, size: int) -> None:
    s = socket.create_connection(("127.0.0.1", port))
    chunk = bytes(MiB)
    for _ in range(size // MiB):
        s.sendall(chunk)
    s.close()


def bulk_transfer(size: int = 1 << 30, runs: int = 3, impl: str | None = None) -> dict[str, list[float]]:
    """GB/s per run for ``netimpl`` and ``sendall``, alternating."""
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_receiver, args=(child, 0), daemon=True)
    proc.start()
    port = parent.recv()
    _pin(1)
    results: dict[str, list[float]] = {"netimpl": [], "sendall": []}
    try:
        for _ in range(runs):
            for name, figures in results.items():
                parent.send("go")
                if name == "netimpl":
                    _send_netimpl(port, size, impl)
                else:
                    _send_plain(port, size)
                total, secs = parent.recv()
                if total != size:
                    raise RuntimeError(f"{name}: receiver got {total} of {size} bytes")
                figures.append(total / secs / 1e9)
    finally:
        parent.send("stop")
        proc.join(5)
        os.sched_setaffinity(0, range(os.cpu_count() or 1))
    return results


def echo_round_trip(impl: str | None, count: int = 1000) -> float:
    """Mean µs per 64-byte echo round trip between two netimpl sockets in one group."""
    lsock = netimpl.listen("127.0.0.1", 0, impl=impl)
    client = netimpl.connect("127.0.0.1", lsock.getaddr()[1], impl=impl)
    server = None
    while server is None:
        server = lsock.accept()
    group = netimpl.SockGroup()
    buf = bytearray(64)
    got = [0]

    def on_server(g, s):
        n = s.recv_into(buf)
        if n:
            s.writev_async(netimpl.Request([bytes(buf[:n])]))

    def on_client(g, s):
        n = s.recv_into(bytearray(64))
        if n:
            got[0] += n

    group.add_sock(server, on_server)
    group.add_sock(client, on_client)
    msg = netimpl.Request([b"x" * 64])
    t0 = time.perf_counter()
    for i in range(count):
        client.writev_async(msg)
        want = (i + 1) * 64
        while got[0] < want:
            group.poll(timeout=1.0)
    elapsed = time.perf_counter() - t0
    for s in (server, client):
        group.remove_sock(s)
        s.close()
    group.close()
    lsock.close()
    return elapsed / count * 1e6


def main(argv: list[str] | None = None, prog: str = "python -m netimpl demo",
         preamble: Callable[[], object] | None = None) -> int:
    """Parse ``argv``, check the backend, run ``preamble`` (the CLI prints ``info``), then the demo."""
    p = argparse.ArgumentParser(prog=prog, description=_cli.sentence(__doc__))
    p.add_argument("--size", type=int, default=1024, help="MiB per bulk transfer (default 1024)")
    p.add_argument("--runs", type=int, default=3, help="runs of each contender (default 3)")
    p.add_argument("--impl", default=None, help="backend (default: NETIMPL_IMPL, else the best available)")
    args = p.parse_args(argv)
    if args.size <= 0 or args.runs <= 0:
        p.error("--size and --runs must be positive")
    impl = _cli.backend(args.impl)
    if preamble is not None:
        preamble()
    print(f"echo: 64-byte round trip over loopback, backend {impl}: {echo_round_trip(impl):.1f} µs")
    print(f"bulk: {args.size} MiB over loopback, {args.runs} runs each, alternating ...", flush=True)
    res = bulk_transfer(args.size * MiB, args.runs, impl)
    med = {k: statistics.median(v) for k, v in res.items()}
    for name, v in res.items():
        print(f"  {name:8s} median {med[name]:6.2f} GB/s  runs: {', '.join(f'{x:.2f}' for x in v)}")
    print(f"  ratio netimpl/sendall: {med['netimpl'] / med['sendall']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(_cli.run(main, "python -m netimpl.demo"))
