"""An asyncio application serving its own line protocol on netimpl, with coroutines where it wants them.

    python examples/aio_lines.py [PORT]        (default 7000; Ctrl-C stops it)

Each request is one line: ``ECHO text``, ``UPPER text`` or ``SLEEP ms``;
each gets one reply line, in order. netimpl calls ``on_read`` in the
loop's thread when a connection has data; the lines go to that
connection's coroutine, which may await anything (here ``SLEEP`` awaits
``asyncio.sleep``) and awaits each reply's completion with
``netimpl.aio.send``. A slow request holds up only its own connection; a
client that sends faster than it reads is paused (``pause_reading``) until
its coroutine catches up, so memory per connection stays bounded.
"""

from __future__ import annotations

import asyncio
import sys

import netimpl
import netimpl.aio

MAX_WAITING = 64        # lines queued per connection before its reading is paused


class Connection:
    def __init__(self, group: netimpl.SockGroup, sock: netimpl.Sock) -> None:
        self.group, self.sock = group, sock
        self.lines: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.partial = b""
        self.paused = False
        self.task = asyncio.create_task(self.serve())

    def on_read(self, group: netimpl.SockGroup, sock: netimpl.Sock) -> None:
        buf = bytearray(65536)
        try:
            n = sock.recv_into(buf)
        except OSError:                   # reset by the peer
            n = 0
        if n is None:
            return
        if n == 0:                        # EOF (or reset): the coroutine finishes what is queued
            group.pause_reading(sock)
            self.lines.put_nowait(None)
            return
        *lines, self.partial = (self.partial + bytes(buf[:n])).split(b"\n")
        for line in lines:
            self.lines.put_nowait(line)
        if self.lines.qsize() >= MAX_WAITING and not self.paused:
            self.paused = True
            group.pause_reading(sock)

    async def serve(self) -> None:
        try:
            while (line := await self.lines.get()) is not None:
                if self.paused and self.lines.qsize() < MAX_WAITING // 2:
                    self.paused = False
                    self.group.resume_reading(self.sock)
                if await netimpl.aio.send(self.sock, [await answer(line), b"\n"]):
                    break                 # the reply failed: the peer is gone
        finally:
            if self.sock.group is self.group:
                self.group.remove_sock(self.sock)
            self.sock.close()


async def answer(line: bytes) -> bytes:
    verb, _, arg = line.strip().partition(b" ")
    if verb == b"ECHO":
        return arg
    if verb == b"UPPER":
        return arg.upper()
    if verb == b"SLEEP" and arg.isdigit():
        await asyncio.sleep(int(arg) / 1000)
        return b"slept " + arg
    return b"ERR unknown request"


async def main(port: int) -> None:
    group = netimpl.SockGroup()
    connections: set[Connection] = set()

    def on_accept(group: netimpl.SockGroup, lsock: netimpl.Sock) -> None:
        while (sock := lsock.accept()) is not None:
            conn = Connection(group, sock)
            connections.add(conn)
            conn.task.add_done_callback(lambda _t, c=conn: connections.discard(c))
            group.add_sock(sock, conn.on_read)

    lsock = netimpl.listen("127.0.0.1", port)
    group.add_sock(lsock, on_accept)
    print(f"serving on 127.0.0.1:{lsock.getaddr()[1]} ({lsock.impl_name} backend)", flush=True)
    try:
        await netimpl.aio.run(group)
    finally:
        for conn in list(connections):
            conn.task.cancel()
        await asyncio.gather(*(c.task for c in connections), return_exceptions=True)
        for sock in group.socks:
            group.remove_sock(sock)
            sock.close()
        group.close()


if __name__ == "__main__":
    try:
        asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 7000))
    except KeyboardInterrupt:
        print("stopped", flush=True)
