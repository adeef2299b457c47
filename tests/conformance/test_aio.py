"""Conformance: ``SockGroup.fileno()`` and ``netimpl.aio`` (asyncio's loop and uvloop), every backend."""

from __future__ import annotations

import asyncio
import select
import time

import pytest

import netimpl
import netimpl.aio
from tests.conformance.conftest import pattern, wait_for


def readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


def settle(g: netimpl.SockGroup, polls: int = 5) -> None:
    for _ in range(polls):
        g.poll(timeout=0.005)


def test_group_fd_is_readable_exactly_while_there_is_work(impl, net, mixed):
    old = netimpl.get_impl_opts(impl)
    netimpl.set_impl_opts(impl, enable_recv_pipe=True)
    try:
        client, server = net.pair()
    finally:
        netimpl.set_impl_opts(impl, old)
    g = net.group(mixed)
    got = []

    def on_read(grp, sock):
        b = bytearray(2)
        n = sock.recv_into(b)   # two bytes at a time: the rest waits in the recv pipe
        if n:
            got.append(bytes(b[:n]))

    g.add_sock(server, on_read)
    fd = g.fileno()
    assert fd == g.fileno() and fd >= 0
    settle(g)
    assert not readable(fd), "an idle, fully served group's fd is readable"
    client.writev([b"abcd"])
    wait_for(lambda: readable(fd), timeout=2)          # a kernel event
    g.poll(max_events=1)
    assert got == [b"ab"] and readable(fd)             # work of poll's own: the recv pipe
    g.poll()
    assert got == [b"ab", b"cd"]
    settle(g)
    assert not readable(fd)
    g.pause_reading(server)
    client.writev([b"ef"])
    time.sleep(0.05)
    settle(g)
    assert not readable(fd), "a paused socket's data makes the group fd readable"
    g.resume_reading(server)
    assert readable(fd), "a socket resumed with data waiting does not make the group fd readable"
    wait_for(lambda: got[-1] == b"ef", lambda: g.poll())
    settle(g)
    # A request queued outside a callback: the kernel can take it now, so the fd says so.
    server.writev_async(netimpl.Request([b"reply"]))
    assert readable(fd)
    wait_for(lambda: server.queued_bytes == 0, lambda: g.poll())
    settle(g)
    assert not readable(fd)


@pytest.fixture(params=["asyncio", "uvloop"])
def loop_factory(request):
    if request.param == "uvloop":
        uvloop = pytest.importorskip("uvloop", reason="uvloop is not installed (pip install uvloop)")
        return uvloop.new_event_loop
    return asyncio.new_event_loop


def run_in(loop_factory, coro):
    loop = loop_factory()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


def test_aio_run_serves_netimpl_beside_asyncio_streams_in_one_loop(impl, net, mixed, loop_factory):
    lsock = net.listen()
    g = net.group(mixed)
    served = []

    def on_read(grp, sock):
        buf = bytearray(65536)
        try:
            n = sock.recv_into(buf)
        except OSError:
            n = 0
        if n:
            served.append(n)
            sock.writev_async(netimpl.Request([b"ack:", bytes(buf[:n])]))
        elif n == 0:
            grp.remove_sock(sock)
            sock.close()

    def on_accept(grp, ls):
        while (s := ls.accept()) is not None:
            net.socks.append(s)
            grp.add_sock(s, on_read)

    g.add_sock(lsock, on_accept)
    port = lsock.getaddr()[1]

    async def streams_echo(reader, writer):
        data = await reader.read(100)
        writer.write(b"stream:" + data)
        await writer.drain()
        writer.close()

    async def main():
        task = asyncio.create_task(netimpl.aio.run(g))
        stream_server = await asyncio.start_server(streams_echo, "127.0.0.1", 0)
        sport = stream_server.sockets[0].getsockname()[1]
        # Many clients of both servers at once, all in this one loop.
        async def netimpl_client(i):
            r, w = await asyncio.open_connection("127.0.0.1", port)
            payload = pattern(1000 + i, seed=i)
            w.write(payload)
            got = await r.readexactly(4 + len(payload))
            w.close()
            return got == b"ack:" + payload

        async def stream_client(i):
            r, w = await asyncio.open_connection("127.0.0.1", sport)
            w.write(b"%d" % i)
            got = await r.read(100)
            w.close()
            return got == b"stream:%d" % i

        results = await asyncio.wait_for(asyncio.gather(*[netimpl_client(i) for i in range(20)],
                                                        *[stream_client(i) for i in range(20)]), 20)
        # Idle: the group costs no CPU while the loop waits.
        cpu0 = time.process_time()
        await asyncio.sleep(0.3)
        idle_cpu = time.process_time() - cpu0
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        stream_server.close()
        return results, idle_cpu

    results, idle_cpu = run_in(loop_factory, main())
    assert all(results) and len(served) >= 20
    assert idle_cpu < 0.1, f"{idle_cpu:.3f}s of CPU in 0.3 s of an idle group under aio.run"
    # Cancelled: the group and its sockets are intact and a plain poll serves them.
    c = net.connect("127.0.0.1", port)
    c.writev([b"after"])
    got = bytearray()
    buf = bytearray(64)

    def step():
        g.poll(timeout=0.01)
        n = c.recv_into(buf)
        if n:
            got.extend(buf[:n])

    wait_for(lambda: bytes(got) == b"ack:after", step)


def test_aio_send_from_a_coroutine_goes_out_without_a_kernel_event(net, mixed, loop_factory):
    client, server = net.pair()
    g = net.group(mixed)
    g.add_sock(server, lambda grp, s: None)
    g.add_sock(client, lambda grp, s: None)

    async def main():
        task = asyncio.create_task(netimpl.aio.run(g))
        await asyncio.sleep(0.05)                      # run() is now waiting on an idle group
        data = pattern(200_000)
        status = await asyncio.wait_for(netimpl.aio.send(server, [data[:1000], data[1000:]]), 5)
        got = bytearray()
        buf = bytearray(65536)
        while len(got) < len(data):
            n = client.recv_into(buf)
            if n:
                got.extend(buf[:n])
            else:
                await asyncio.sleep(0.001)
        # A raw writev_async from a coroutine is sent too, by the loop's next iteration.
        server.writev_async(netimpl.Request([b"raw"]))
        deadline = time.monotonic() + 5
        while server.queued_bytes and time.monotonic() < deadline:
            await asyncio.sleep(0.001)
        queued = server.queued_bytes
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        return status, bytes(got) == data, queued

    status, intact, queued = run_in(loop_factory, main())
    assert status == 0 and intact and queued == 0


def test_aio_run_argument_checks_and_one_driver(net, loop_factory):
    g = net.group()

    async def main():
        with pytest.raises(TypeError):
            await netimpl.aio.run("group")  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            await netimpl.aio.run(g, max_events=0)
        task = asyncio.create_task(netimpl.aio.run(g))
        await asyncio.sleep(0.01)
        with pytest.raises(RuntimeError, match="already driven"):
            await netimpl.aio.run(g)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        assert g._driver is None

    run_in(loop_factory, main())
