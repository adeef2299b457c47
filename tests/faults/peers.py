"""Peers for the fault suite: plain-socket clients (run beyond the link) and a netimpl echo server.

The clients use the standard library's sockets only, so a defect in
netimpl cannot hide itself on both ends. Every stream is a seeded
pseudo-random byte sequence: the receiver regenerates it and names the
first wrong offset.
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import random
import selectors
import socket
import struct
import time
from typing import Any

import netimpl

POISON = 0xEE


def stream(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


def first_difference(a: bytes | bytearray, b: bytes | bytearray) -> int:
    """The first offset where ``a`` and ``b`` differ (-1: equal)."""
    if a == b:
        return -1
    n = min(len(a), len(b))
    lo, hi = 0, n
    while hi - lo > 64:
        mid = (lo + hi) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid
    return next((i for i in range(lo, hi) if a[i] != b[i]), n)


def echo_client(host: str, port: int, nbytes: int, seed: int, conn: Any, timeout: float = 60.0) -> None:
    """Send ``nbytes`` in randomly split writes with short stalls while reading the echo; report and exit.

    Reports ``dict(sent, received, mismatch, error)``: ``mismatch`` is the
    first offset where the echo differs from what was sent (-1: none).
    """
    rng = random.Random(seed ^ 0x5EED)
    data = stream(seed, nbytes)
    got = bytearray()
    out = {"sent": 0, "received": 0, "mismatch": -1, "error": ""}
    try:
        s = socket.create_connection((host, port), timeout=10)
        s.setblocking(False)
        sel = selectors.DefaultSelector()
        sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE)
        deadline = time.monotonic() + timeout
        sent = 0
        while len(got) < nbytes:
            if time.monotonic() > deadline:
                raise TimeoutError(f"echo incomplete: sent {sent}, got {len(got)} of {nbytes}")
            for _key, events in sel.select(0.5):
                if events & selectors.EVENT_READ:
                    chunk = s.recv(1 << 18)
                    if not chunk:
                        raise EOFError(f"EOF after {len(got)} of {nbytes} echoed bytes")
                    got += chunk
                if events & selectors.EVENT_WRITE and sent < nbytes:
                    piece = rng.choice((1, 7, 100, 1448, 4096, 65536, 1 << 18))
                    try:
                        sent += s.send(data[sent:sent + piece])
                    except BlockingIOError:
                        pass
                    if sent >= nbytes:
                        sel.modify(s, selectors.EVENT_READ)
                        s.shutdown(socket.SHUT_WR)
                    elif rng.random() < 0.002:
                        time.sleep(rng.uniform(0, 0.02))     # a stall: the segments' timing changes
        out.update(sent=sent, received=len(got), mismatch=first_difference(data, got))
        s.close()
    except Exception as exc:  # noqa: BLE001 - any failure is the report
        out.update(received=len(got), mismatch=first_difference(data[:len(got)], got), error=repr(exc))
    conn.send(out)


def reset_client(host: str, port: int, conn: Any) -> None:
    """Connect, send one byte, read nothing; when told, reset the connection (SO_LINGER 0)."""
    s = socket.create_connection((host, port), timeout=10)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.sendall(b"!")
    if conn.poll(30):
        conn.recv()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
    conn.send("reset")


def digest_reader(host: str, port: int, conn: Any) -> None:
    """Connect, read to EOF; report ``(bytes, sha256, poison seen)``."""
    s = socket.create_connection((host, port), timeout=30)
    h = hashlib.sha256()
    n, poisoned = 0, False
    buf = bytearray(1 << 20)
    while True:
        k = s.recv_into(buf)
        if not k:
            break
        n += k
        view = memoryview(buf)[:k]
        h.update(view)
        poisoned = poisoned or bytes([POISON]) * 64 in view
    conn.send((n, h.hexdigest(), poisoned))
    s.close()


class EchoServer:
    """Listeners of the given backends in one group; every byte received is sent back by ``writev_async``.

    Each reply is a fresh buffer, poisoned in its own callback: a buffer
    handed back while the kernel could still read it shows up at the peer
    as a mismatch. ``received`` hashes what arrived, per connection.
    """

    def __init__(self, backends: list[str], host: str) -> None:
        self.group = netimpl.SockGroup()
        self.listeners = [netimpl.listen(host, 0, impl=b) for b in backends]
        for lsock in self.listeners:
            self.group.add_sock(lsock, self._accept)
        self.conns: list[netimpl.Sock] = []
        self.received: dict[netimpl.Sock, Any] = {}
        self.nreceived: dict[netimpl.Sock, int] = {}
        self.eof: set[netimpl.Sock] = set()
        self.statuses: list[int] = []
        self.queued = 0
        self.errors: list[BaseException] = []
        self._buf = bytearray(1 << 18)

    @property
    def ports(self) -> list[int]:
        return [lsock.getaddr()[1] for lsock in self.listeners]

    def _accept(self, group: netimpl.SockGroup, lsock: netimpl.Sock) -> None:
        while (sock := lsock.accept()) is not None:
            self.conns.append(sock)
            self.received[sock] = hashlib.sha256()
            self.nreceived[sock] = 0
            group.add_sock(sock, self._read)

    def _done(self, req: netimpl.Request, status: int) -> None:
        self.statuses.append(status)
        buf = req.bufs[0]
        buf[:] = bytes([POISON]) * len(buf)

    def _read(self, group: netimpl.SockGroup, sock: netimpl.Sock) -> None:
        for _ in range(8):
            try:
                n = sock.recv_into(self._buf)
            except OSError as exc:
                self.errors.append(exc)
                self.eof.add(sock)
                group.remove_sock(sock)
                return
            if n is None:
                return
            if n == 0:
                self.eof.add(sock)      # stays in the group: its echo may still be draining
                return
            data = bytearray(self._buf[:n])
            self.received[sock].update(data)
            self.nreceived[sock] += n
            sock.writev_async(netimpl.Request([data], cb=self._done))
            self.queued += 1

    def poll_until(self, done: Any, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not done() and time.monotonic() < deadline:
            self.group.poll(timeout=0.005)

    def close(self) -> None:
        for sock in self.group.socks:
            self.group.remove_sock(sock)
        for sock in self.conns + self.listeners:
            sock.close()
        self.group.close()



class Peers:
    """Client processes beyond the link, each with a pipe to report on; :meth:`close` leaves no fd behind."""

    def __init__(self, link: Any) -> None:
        self.link = link
        self.procs: list[Any] = []
        self.pipes: list[Any] = []

    def start(self, target: Any, *args: Any) -> Any:
        """Run ``target(*args, conn)`` in the client namespace; returns this side of ``conn``."""
        parent, child = mp.get_context("fork").Pipe()
        self.procs.append(self.link.run_client(target, *args, child))
        child.close()
        self.pipes.append(parent)
        return parent

    def reports(self, timeout: float) -> list[Any]:
        deadline = time.monotonic() + timeout
        return [p.recv() if p.poll(max(0.0, deadline - time.monotonic())) else None for p in self.pipes]

    def close(self) -> None:
        for proc in self.procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join()
            proc.close()
        for p in self.pipes:
            p.close()
        self.procs.clear()
        self.pipes.clear()
