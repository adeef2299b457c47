"""Many small requests over many connections: system calls and CPU per request, per backend.

    python benchmarks/small_requests.py [--impls uring,posix] [--conns 64] [--depth 8]
                                        [--seconds 3] [--rounds 3]

Each round runs every backend once, alternating (A B A B ...). A server
process (pinned to CPU 1) answers each 64-byte request with a 64-byte
response through a SockGroup; the load generator (this process, CPU 0)
keeps ``depth`` requests outstanding on each of ``conns`` plain sockets.
For the measured window it reports requests/s, the server's CPU time per
request (getrusage in the server) and, when ``perf`` can count the
``raw_syscalls:sys_enter`` tracepoint, the server's system calls per 1000
requests. Medians over the rounds are printed with the ratio to the first
backend. Not a test: nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import os
import resource
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time

MSG = 64


def serve(impl: str) -> None:
    import netimpl

    os.sched_setaffinity(0, {1 % os.cpu_count()})
    lsock = netimpl.listen("127.0.0.1", 0, impl=impl)
    group = netimpl.SockGroup()
    response = b"r" * MSG
    buf = bytearray(1 << 16)
    partial: dict = {}
    served = [0]

    def on_read(g, sock):
        try:
            n = sock.recv_into(buf)
        except ConnectionError:
            n = 0
        if not n:
            g.remove_sock(sock)
            sock.close()
            return
        have = partial.get(sock, 0) + n
        count, partial[sock] = divmod(have, MSG)
        for _ in range(count):
            sock.writev_async(netimpl.Request([response]))
        served[0] += count

    stop = [False]
    signal.signal(signal.SIGTERM, lambda *a: stop.__setitem__(0, True))
    signal.signal(signal.SIGUSR1, lambda *a: mark())
    marks = []

    def mark():
        r = resource.getrusage(resource.RUSAGE_SELF)
        marks.append((served[0], r.ru_utime + r.ru_stime))

    print(lsock.getaddr()[1], flush=True)
    while not stop[0]:
        while (s := lsock.accept()) is not None:
            group.add_sock(s, on_read)
        group.poll(max_events=64, timeout=0.001)
    (n0, c0), (n1, c1) = marks[0], marks[1]
    print(f"{n1 - n0} {c1 - c0}", flush=True)


def load(port: int, conns: int, depth: int, seconds: float, server: subprocess.Popen) -> tuple[int, float, int | None]:
    """Drive the server; returns (responses in the window, server CPU seconds, server syscalls or None)."""
    sel = selectors.DefaultSelector()
    socks = []
    for _ in range(conns):
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
        socks.append(s)
        s.send(b"q" * MSG * depth)
    perf = None
    warm_until = time.monotonic() + 0.5
    window_end = None
    while True:
        now = time.monotonic()
        if window_end is None and now >= warm_until:
            server.send_signal(signal.SIGUSR1)
            if shutil.which("perf"):
                perf = subprocess.Popen(["perf", "stat", "-x,", "-e", "raw_syscalls:sys_enter", "-p", str(server.pid)],
                                        stderr=subprocess.PIPE, text=True)
            window_end = now + seconds
        if window_end is not None and now >= window_end:
            break
        for key, _ in sel.select(0.1):
            s = key.fileobj
            try:
                data = s.recv(65536)
            except BlockingIOError:
                continue
            if data:
                # each 64 bytes back frees one slot: send that many new requests
                s.sendall(b"q" * len(data))
    server.send_signal(signal.SIGUSR1)
    syscalls = None
    if perf is not None:
        perf.send_signal(signal.SIGINT)
        out = perf.communicate()[1]
        for line in out.splitlines():
            if "raw_syscalls:sys_enter" in line and line.split(",")[0].isdigit():
                syscalls = int(line.split(",")[0])
    time.sleep(0.05)
    server.send_signal(signal.SIGTERM)
    for s in socks:
        s.close()
    n, cpu = server.communicate(timeout=10)[0].split()[-2:]
    return int(n), float(cpu), syscalls


def run_one(impl: str, args) -> dict:
    server = subprocess.Popen([sys.executable, __file__, "serve", impl], stdout=subprocess.PIPE, text=True)
    port = int(server.stdout.readline())
    n, cpu, syscalls = load(port, args.conns, args.depth, args.seconds, server)
    return {"rps": n / args.seconds, "cpu_us": cpu / n * 1e6 if n else float("nan"),
            "sys_per_k": syscalls / n * 1000 if (n and syscalls) else None}


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "serve":
        serve(sys.argv[2])
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--impls", default="uring,posix")
    p.add_argument("--conns", type=int, default=64)
    p.add_argument("--depth", type=int, default=8)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    os.sched_setaffinity(0, {0})
    impls = args.impls.split(",")
    results: dict[str, list[dict]] = {i: [] for i in impls}
    for r in range(args.rounds):
        for impl in impls:
            res = run_one(impl, args)
            results[impl].append(res)
            sk = f"{res['sys_per_k']:.0f}" if res["sys_per_k"] is not None else "n/a"
            print(f"round {r + 1} {impl:6s} {res['rps']:9.0f} req/s  {res['cpu_us']:6.2f} µs CPU/req  {sk} syscalls/1000 req",
                  flush=True)
    print(f"\nmedians over {args.rounds} rounds, {args.conns} connections x {args.depth} outstanding, {MSG}-byte requests:")
    base = None
    for impl in impls:
        rows = results[impl]
        med = {k: statistics.median([x[k] for x in rows if x[k] is not None] or [float("nan")]) for k in rows[0]}
        base = base or med
        print(f"  {impl:6s} {med['rps']:9.0f} req/s ({med['rps'] / base['rps']:.2f}x)  "
              f"{med['cpu_us']:6.2f} µs CPU/req ({med['cpu_us'] / base['cpu_us']:.2f}x)  "
              f"{med['sys_per_k']:7.1f} syscalls/1000 req ({med['sys_per_k'] / base['sys_per_k']:.2f}x)")


if __name__ == "__main__":
    main()
