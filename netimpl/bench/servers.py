"""The servers under test, one per contender, each written as its API is meant to be used.

    python -m netimpl.bench.servers CONTENDER rr REQ_SIZE RESP_SIZE
    python -m netimpl.bench.servers CONTENDER bulk CHUNK

``rr``: answer every ``REQ_SIZE``-byte request with a ``RESP_SIZE``-byte
response. ``bulk``: stream ``CHUNK``-byte writes to each client until it
goes. The server prints its port, records its user and system CPU time
(getrusage, all threads) at each SIGUSR1, and at SIGTERM prints those marks and exits.
Contenders: ``c-epoll`` (the floor: a plain C epoll server, ``floor.c``),
``c-uring`` (the io_uring design's floor: a plain C server on netimpl's ring code, ``floor_uring.c``),
``netimpl:<backend>``, ``netimpl-aio:<backend>`` (the same server driven by
``netimpl.aio.run`` inside an asyncio loop, uvloop's where installed),
``netimpl-next:<backend>`` (the same server reading with ``Sock.recv_next``),
``asyncio``, ``uvloop``, ``blocking``.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import sys
import threading
import time

from .report import FLOOR, URING_FLOOR

MARKS: list[tuple[float, float]] = []


def cpu_now() -> tuple[float, float]:
    """User and system CPU seconds of this process, all threads."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime


def mark(*_: object) -> None:
    MARKS.append(cpu_now())


def announce(port: int) -> None:
    print(port, flush=True)


def finish() -> None:
    print(json.dumps(MARKS), flush=True)


# -- netimpl -------------------------------------------------------------------

def serve_netimpl(impl: str, mode: str, a: int, b: int, aio: bool = False, recv_next: bool = False) -> None:
    import netimpl

    lsock = netimpl.listen("127.0.0.1", 0, impl=impl)
    group = netimpl.SockGroup()
    stop = [False]
    signal.signal(signal.SIGUSR1, mark)
    signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__(0, True))

    if mode == "rr":
        req_size, resp = a, bytes(b)
        buf = bytearray(256 * 1024)  # the read size of asyncio's and uvloop's transports
        state: dict = {}
        pool: list = []  # recycled Requests: no allocation per batch once warm

        def done(req, status):
            pool.append(req)

        def on_read(g, sock):
            try:
                n = sock.recv_into(buf)
            except ConnectionError:
                n = 0
            if n is None:
                return  # nothing to read after all (a readiness report the callback's last read took)
            if not n:
                g.remove_sock(sock)
                sock.close()
                return
            count, state[sock] = divmod(state.get(sock, 0) + n, req_size)
            if count:
                # the replies to one read batch, as one request of `count` iovecs (no joined copy)
                req = pool.pop() if pool else netimpl.Request((), cb=done)
                req.bufs = [resp] * count
                sock.writev_async(req)

        def on_read_next(g, sock):
            # Sock.recv_next: the bytes where the backend holds them (uring lends its provided
            # buffers: no copy), until it has no more.
            n = 0
            while True:
                try:
                    view = sock.recv_next()
                except ConnectionError:
                    view = b""
                if view is None:
                    break
                if not view:
                    g.remove_sock(sock)
                    sock.close()
                    return
                n += len(view)
                view.release()
            count, state[sock] = divmod(state.get(sock, 0) + n, req_size)
            if count:
                req = pool.pop() if pool else netimpl.Request((), cb=done)
                req.bufs = [resp] * count
                sock.writev_async(req)

        on_accept = on_read_next if recv_next else on_read
    else:
        chunk = bytes(a)

        def refill(req, status):
            sock = req.ctx
            if status == 0 and not sock.closed:
                sock.writev_async(req)

        def on_accept(g, sock):  # the client only reads: readable means it went
            try:
                n = sock.recv_into(bytearray(16))
            except ConnectionError:
                n = 0
            if n == 0:
                g.remove_sock(sock)
                sock.close()

    def on_listener(g, listener):
        for s in iter(listener.accept, None):
            g.add_sock(s, on_accept)
            if mode == "bulk":
                for _ in range(8):
                    s.writev_async(netimpl.Request([chunk], cb=refill, ctx=s))

    group.add_sock(lsock, on_listener)
    if aio:
        serve_in_asyncio(group, lsock)
        return
    announce(lsock.getaddr()[1])
    while not stop[0]:
        group.poll(max_events=64, timeout=0.005)
    finish()


def serve_in_asyncio(group, lsock) -> None:
    """The same group, driven by ``netimpl.aio.run`` from an asyncio loop (uvloop's when installed)."""
    import asyncio

    import netimpl.aio

    try:
        import uvloop
        loop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()

    async def main() -> None:
        stopped = loop.create_future()
        loop.add_signal_handler(signal.SIGUSR1, mark)
        loop.add_signal_handler(signal.SIGTERM, lambda: stopped.done() or stopped.set_result(None))
        task = asyncio.create_task(netimpl.aio.run(group, max_events=64))
        announce(lsock.getaddr()[1])
        await stopped
        task.cancel()

    loop.run_until_complete(main())
    finish()


# -- asyncio and uvloop --------------------------------------------------------

def serve_asyncio(loop_kind: str, mode: str, a: int, b: int) -> None:
    import asyncio

    loop: asyncio.AbstractEventLoop
    if loop_kind == "uvloop":
        import uvloop

        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)

    class RR(asyncio.Protocol):
        def connection_made(self, transport):
            self.t = transport
            self.partial = 0
            self.resp = bytes(b)

        def data_received(self, data):
            count, self.partial = divmod(self.partial + len(data), a)
            if count:
                self.t.writelines([self.resp] * count)

    class Bulk(asyncio.Protocol):
        def connection_made(self, transport):
            self.t = transport
            self.chunk = bytes(a)
            self.paused = False
            self.pump()

        def pump(self):
            # A bounded batch, then yield: with a fast reader the socket never fills,
            # and an unbounded loop would starve the event loop.
            for _ in range(16):
                if self.paused or self.t.is_closing():
                    return
                self.t.write(self.chunk)
            loop.call_soon(self.pump)

        def pause_writing(self):
            self.paused = True

        def resume_writing(self):
            self.paused = False
            self.pump()

    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGUSR1, mark)
    loop.add_signal_handler(signal.SIGTERM, lambda: None if stop.done() else stop.set_result(None))

    async def main():
        server = await loop.create_server(RR if mode == "rr" else Bulk, "127.0.0.1", 0)
        announce(server.sockets[0].getsockname()[1])
        await stop
        server.close()

    loop.run_until_complete(main())
    finish()


# -- the floors: plain C servers of the same protocols, on epoll and on io_uring ---

def serve_floor(mode: str, a: int, b: int, kind: str = "epoll") -> None:
    from .floor import FloorServer, unavailable

    if unavailable(kind):
        raise SystemExit(unavailable(kind))
    ls = socket.create_server(("127.0.0.1", 0), backlog=2048)
    ls.setblocking(False)
    # The C loop runs until a signal arrives: Python's handlers (the CPU marks, the stop) run between its runs.
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    stop = [False]
    signal.signal(signal.SIGUSR1, mark)
    signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__(0, True))
    server = FloorServer(ls.fileno(), wake_r, mode, a, b, kind=kind)
    announce(ls.getsockname()[1])
    try:
        while not stop[0]:
            server.run(100)  # the timeout only bounds how late a stop seen after its wakeup byte can be
    finally:
        server.close()
    finish()


# -- plain blocking sockets, a thread per connection ---------------------------

def serve_blocking(mode: str, a: int, b: int) -> None:
    ls = socket.create_server(("127.0.0.1", 0), backlog=2048)
    signal.signal(signal.SIGUSR1, mark)
    # A flag, not a threading.Event: a handler runs between the main thread's bytecodes, maybe
    # while that thread holds the Event's (non-reentrant) lock in wait(), and set() would then
    # wait on it for ever.
    stop = [False]
    signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__(0, True))

    def rr(s: socket.socket) -> None:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = bytearray(1 << 16)
        partial, resp = 0, bytes(b)
        try:
            while n := s.recv_into(buf):
                count, partial = divmod(partial + n, a)
                if count:
                    s.sendall(resp * count)
        except OSError:
            pass
        s.close()

    def bulk(s: socket.socket) -> None:
        chunk = bytes(a)
        try:
            while True:
                s.sendall(chunk)
        except OSError:
            pass
        s.close()

    def acceptor() -> None:
        while True:
            s, _ = ls.accept()
            threading.Thread(target=rr if mode == "rr" else bulk, args=(s,), daemon=True).start()

    threading.Thread(target=acceptor, daemon=True).start()
    announce(ls.getsockname()[1])
    while not stop[0]:
        time.sleep(0.01)
    finish()


def main(argv: list[str]) -> None:
    contender, mode, *nums = argv
    a = int(nums[0])
    b = int(nums[1]) if len(nums) > 1 else 0
    cpu = os.environ.get("NETIMPL_BENCH_CPU")
    if cpu is not None:
        os.sched_setaffinity(0, {int(cpu)})
    if contender == FLOOR:
        serve_floor(mode, a, b)
    elif contender == URING_FLOOR:
        serve_floor(mode, a, b, kind="uring")
    elif contender.startswith("netimpl:"):
        serve_netimpl(contender.split(":", 1)[1], mode, a, b)
    elif contender.startswith("netimpl-aio:"):
        serve_netimpl(contender.split(":", 1)[1], mode, a, b, aio=True)
    elif contender.startswith("netimpl-next:"):
        serve_netimpl(contender.split(":", 1)[1], mode, a, b, recv_next=True)
    elif contender in ("asyncio", "uvloop"):
        serve_asyncio(contender, mode, a, b)
    elif contender == "blocking":
        serve_blocking(mode, a, b)
    else:
        raise SystemExit(f"unknown contender {contender!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
