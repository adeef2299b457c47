"""CPU cost of the TLS layer beside plain sockets: a short in-process measurement, not a test.

    python -m tests.tls.measure_cpu [--mib 64] [--requests 20000]

Both ends of a loopback connection live in this process, in one group, so
each figure is the CPU of both ends together (plain: the two sides' system
calls and Python; TLS: that, plus encrypting at one end and decrypting at
the other). Three workloads per backend: a bulk stream of 1 MiB requests,
a stream of NBD-read-shaped replies (a 16-byte header and 4 KiB of data as
one request), and QD1 round trips (4 KiB up, a 16-byte reply down).
Certificates are made for the run with the openssl command.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import netimpl
from netimpl import tls


def _certs(d: Path) -> Path:
    if shutil.which("openssl") is None:
        sys.exit("the openssl command is needed to make throwaway certificates")
    from tests.tls.conftest import Certs  # the tests' own certificate maker

    Certs(d)
    return d / "good"


class Pair:
    def __init__(self, impl: str, certdir: Path | None) -> None:
        self.lsock = netimpl.listen("127.0.0.1", 0, impl=impl)
        self.client = netimpl.connect("127.0.0.1", self.lsock.getaddr()[1], impl=impl)
        while (s := self.lsock.accept()) is None:
            time.sleep(0.001)
        self.server = s
        self.group = netimpl.SockGroup()
        self.on_server = self.on_client = lambda g, s: None
        if certdir is not None:  # wrapped before joining: the group holds TLS sockets only, as plain holds posix only
            self.server = tls.wrap(self.server, tls.server_context(certdir), server_side=True)
            self.client = tls.wrap(self.client, tls.client_context(certdir), server_side=False,
                                   server_hostname="localhost")
        self.group.add_sock(self.server, lambda g, s: self.on_server(g, s))
        self.group.add_sock(self.client, lambda g, s: self.on_client(g, s))
        if certdir is not None:
            while not (self.server.established and self.client.established):  # type: ignore[attr-defined]
                self.group.poll(timeout=0.01)

    def close(self) -> None:
        for s in (self.server, self.client):
            self.group.remove_sock(s)
            s.close()
        self.group.close()
        self.lsock.close()


def _counting(size: int, got: list[int]):
    """A read callback that reads up to 8 times and counts the bytes."""
    buf = bytearray(size)

    def readable(g, s):
        for _ in range(8):
            n = s.recv_into(buf)
            if not n:
                return
            got[0] += n

    return readable


def bulk(p: Pair, mib: int) -> float:
    """CPU seconds per MiB, client to server in 1 MiB requests."""
    got = [0]
    p.on_server = _counting(1 << 20, got)
    chunk = bytes(1 << 20)
    sent = 0
    cpu = time.process_time()
    while got[0] < mib << 20:
        while sent < mib and p.client.queued_bytes < 8 << 20:
            p.client.writev_async(netimpl.Request([chunk]))
            sent += 1
        p.group.poll(timeout=0.01)
    return (time.process_time() - cpu) / mib


def replies(p: Pair, count: int) -> float:
    """CPU seconds per 4 KiB reply (header + data in one request), server to client, streamed."""
    want = count * (16 + 4096)
    got = [0]
    p.on_client = _counting(256 * 1024, got)
    header, data = bytes(16), bytes(4096)
    sent = 0
    cpu = time.process_time()
    while got[0] < want:
        while sent < count and p.server.queued_bytes < 1 << 20:
            for _ in range(32):
                p.server.writev_async(netimpl.Request([header, data]))
                sent += 1
        p.group.poll(timeout=0.01)
    return (time.process_time() - cpu) / count


def qd1(p: Pair, count: int) -> float:
    """CPU seconds per QD1 round trip: 4 KiB request up, 16-byte reply down."""
    sbuf, cbuf = bytearray(65536), bytearray(65536)
    state = {"in": 0, "done": 0}
    reply, data = bytes(16), bytes(4096)

    def on_server(g, s):
        n = s.recv_into(sbuf)
        if n:
            state["in"] += n
            while state["in"] >= 4096:
                state["in"] -= 4096
                s.writev_async(netimpl.Request([reply]))

    def on_client(g, s):
        n = s.recv_into(cbuf)
        if n:
            state["done"] += n // 16
            if state["done"] < count:
                s.writev_async(netimpl.Request([data]))

    p.on_server, p.on_client = on_server, on_client
    cpu = time.process_time()
    p.client.writev_async(netimpl.Request([data]))
    while state["done"] < count:
        p.group.poll(timeout=0.01)
    return (time.process_time() - cpu) / count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mib", type=int, default=64)
    ap.add_argument("--requests", type=int, default=20000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        certdir = _certs(Path(tmp))
        print(f"{'backend':8} {'mode':6} {'bulk ms/MiB':>12} {'4K reply us':>12} {'QD1 4K us':>10}")
        for info in netimpl.impls():
            if not info.available:
                print(f"{info.name:8} unavailable: {info.reason}")
                continue
            row = {}
            for mode, cd in (("plain", None), ("tls", certdir)):
                figures = []
                for fn, n in ((bulk, args.mib), (replies, args.requests), (qd1, args.requests // 4)):
                    p = Pair(info.name, cd)
                    try:
                        figures.append(fn(p, n))
                    finally:
                        p.close()
                row[mode] = figures
                b, r, q = figures
                print(f"{info.name:8} {mode:6} {b * 1e3:12.2f} {r * 1e6:12.2f} {q * 1e6:10.2f}")
            (pb, pr, pq), (tb, tr, tq) = row["plain"], row["tls"]
            print(f"{info.name:8} {'tls/plain':9} {tb / pb:9.2f}x {tr / pr:11.2f}x {tq / pq:9.2f}x")


if __name__ == "__main__":
    main()
