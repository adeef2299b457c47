"""The NBD server inside an existing asyncio program: ``await NbdServer.serve_async()``."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from netimpl.nbd import MemoryStore, NbdServer
from tests.nbd.client import Client


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_serve_async_beside_other_tasks(impl, loop_kind):
    if loop_kind == "uvloop":
        uvloop = pytest.importorskip("uvloop", reason="uvloop is not installed")
        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    store = MemoryStore(16 << 20)
    data = os.urandom(256 << 10)

    def client(port: int) -> bytes:
        with Client(port) as c:
            c.connect()
            assert c.write(4096, data) == 0
            return c.read(4096, len(data))

    async def main():
        server = NbdServer({"": store}, "127.0.0.1", 0, impl=impl, handshake_timeout=0.5)
        serving = asyncio.create_task(server.serve_async(timer_period=0.1))
        ticks = 0

        async def ticker():                      # the program's own work goes on meanwhile
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        other = asyncio.create_task(ticker())
        port = server.address[1]
        got = await loop.run_in_executor(None, client, port)
        # A client that never negotiates is dropped by the deadline, a timer serve_async runs.
        idle = Client(port)
        await loop.run_in_executor(None, idle.recv_exact, 18)   # the greeting; then it says nothing
        t0 = time.monotonic()
        closed = await loop.run_in_executor(None, idle.is_closed, 5.0)
        waited = time.monotonic() - t0
        idle.close()
        serving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await serving
        other.cancel()
        # Cancelled, the server is still whole: a plain poll loop goes on serving it.
        again = loop.run_in_executor(None, client, port)
        while not again.done():
            server.poll(0.01)
            await asyncio.sleep(0)
        server.close()
        return got, ticks, closed, waited, await again

    try:
        got, ticks, closed, waited, again = loop.run_until_complete(main())
    finally:
        loop.close()
        store.close()
    assert got == data and again == data and ticks > 20   # ~0.5 s of the program's own ticks
    assert closed and waited < 3, f"the negotiation deadline was not enforced under asyncio ({waited:.1f}s)"
