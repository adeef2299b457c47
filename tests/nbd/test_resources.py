"""What one client can make the server hold: buffers, file descriptors, time, memory.

Each test here is a defect a fault suite found: buffers that waited for the
cyclic collector, an accept loop that spun and flooded the log at the fd
limit, a handshake that could hold an fd forever, a banner that misreported
zero-copy, and replies that piled up without bound for a client that never
reads them.
"""

from __future__ import annotations

import gc
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
import weakref

import pytest

from netimpl.nbd import MemoryStore, open_file_store

from .client import IHAVEOPT, OPT, REP_ACK, REP_MAGIC, REP_SERVER, REQ_MAGIC, SIMPLE_MAGIC, Client, Closed

MiB = 1 << 20


def wait_for(cond, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def read_requests(count: int, length: int, span: int, first_handle: int = 1) -> bytes:
    """``count`` pipelined READs of ``length`` bytes, cycling over the first ``span`` bytes."""
    per = max(1, span // length)
    return b"".join(struct.pack(">IHHQQI", REQ_MAGIC, 0, 0, first_handle + i, (i % per) * length, length)
                    for i in range(count))


@pytest.fixture
def no_gc():
    """The cyclic collector off: what is freed here is freed by reference counting alone."""
    was = gc.isenabled()
    gc.collect()
    gc.disable()
    yield
    if was:
        gc.enable()


# -- defect 5: a closed connection's buffers are released when it closes -----------------------

@pytest.mark.parametrize("kind", ["memory", "file"])
def test_a_closed_connection_and_its_reply_buffers_go_without_the_cyclic_collector(nbd, tmp_path, no_gc, kind):
    if kind == "file":
        path = tmp_path / "disk.img"
        with open(path, "wb") as f:
            f.truncate(64 * MiB)
        store = open_file_store(str(path))
        lent: list[weakref.ref] = []
        get = store._bounce.get

        def tracked_get(length):
            buf = get(length)
            lent.append(weakref.ref(buf))
            return buf

        store._bounce.get = tracked_get
    else:
        store = MemoryStore(64 * MiB)
    srv = nbd({"": store})
    with Client(srv.port) as c:
        c.connect()
        assert wait_for(lambda: len(srv.server.connections) == 1)
        conn = weakref.ref(next(iter(srv.server.connections)))
        c.s.sendall(read_requests(100, MiB, 64 * MiB))        # more lent buffers than the pool keeps
        for _ in range(100):
            c.reply(MiB)
    assert wait_for(lambda: not srv.server.connections), "the server kept the client"
    assert wait_for(lambda: conn() is None, 2.0), \
        f"the closed connection is still alive: {gc.get_referrers(conn())!r:.300}"
    if kind == "file":
        pooled = {id(b) for bufs in store._bounce._free.values() for b in bufs}
        alive = [r() for r in lent if r() is not None and id(r()) not in pooled]
        assert not alive, f"{len(alive)} reply buffers outlived their replies"
        assert store._bounce.kept <= store._bounce.KEEP_BYTES
    else:
        mm = store._mmap
        store.close()                                          # no reply still holds a slice of it
        assert mm.closed


# -- defect 7: negotiation has a deadline ------------------------------------------------------

def test_a_client_that_never_negotiates_is_dropped_after_the_handshake_timeout(nbd, caplog):
    srv = nbd(handshake_timeout=0.5)
    with Client(srv.port) as idle, Client(srv.port) as slow, Client(srv.port) as good:
        idle.recv_exact(18)                                   # the greeting, and then nothing
        slow.greeting()
        good.connect()
        for _ in range(40):                                   # an option, one byte per 50 ms: never done in time
            try:
                slow.s.sendall(b"I")
            except OSError:
                break
            time.sleep(0.05)
        assert idle.is_closed(5.0) and slow.is_closed(5.0)
        assert good.read(0, 4096) == bytes(4096)              # transmission has no deadline
    assert caplog.text.count("negotiation not finished after 0.5 s") == 2


def test_without_a_handshake_timeout_an_idle_client_stays(nbd):
    srv = nbd(handshake_timeout=None)
    with Client(srv.port) as idle:
        idle.recv_exact(18)
        assert not idle.is_closed(1.0)
        idle.s.sendall(struct.pack(">I", 3))
        idle.go("")
        assert idle.read(0, 8) == bytes(8)


@pytest.mark.parametrize("bad,exc", [(-1, ValueError), (0, ValueError), (float("nan"), ValueError),
                                     (float("inf"), ValueError), ("10", TypeError), (True, TypeError)])
def test_a_bad_handshake_timeout_is_refused_naming_it(bad, exc):
    from netimpl.nbd import NbdServer

    with pytest.raises(exc, match=f"handshake_timeout .*{bad!r}"):
        NbdServer({"": MemoryStore(MiB)}, "127.0.0.1", 0, handshake_timeout=bad)


# -- defect 6: at the fd limit the server backs off, logs once, and recovers by itself ---------

def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _greeted(c: Client, timeout: float) -> bool:
    c.s.settimeout(timeout)
    try:
        return c.recv_exact(18).startswith(b"NBDMAGIC")
    except (TimeoutError, Closed):
        return False


_LIMITED_SERVER = """
import resource, sys
from netimpl.nbd.__main__ import main
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
sys.exit(main(sys.argv[2:]))
"""


def test_at_the_fd_limit_the_server_backs_off_logs_once_and_recovers(impl, tmp_path):
    limit = 48
    log = tmp_path / "stderr.txt"
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", _LIMITED_SERVER, str(limit), "--impl", impl, "--host", "127.0.0.1",
             "--port", "0", "--size", "16M", "--handshake-timeout", "0"],
            stdout=subprocess.PIPE, stderr=err, text=True)
    clients: list[Client] = []
    try:
        m = re.search(r"listening on 127\.0\.0\.1:(\d+)", proc.stdout.readline())
        assert m, log.read_text()
        port = int(m.group(1))
        while True:                                   # connect until the server can take no more
            c = Client(port)
            clients.append(c)
            if not _greeted(c, 2.0):
                break
            assert len(clients) < limit, "the fd limit did not bite"
        waiting = clients.pop()                       # in the backlog: accept fails with EMFILE
        cpu0, t0 = _cpu_seconds(proc.pid), time.monotonic()
        time.sleep(2.0)
        cpu = _cpu_seconds(proc.pid) - cpu0
        wall = time.monotonic() - t0
        text = log.read_text()
        assert text.count("accept failed") == 1, text[-2000:]
        assert "Too many open files" in text
        assert len(text.splitlines()) < 5, text[-2000:]
        assert cpu < 0.25 * wall, f"{cpu:.2f} s of CPU in {wall:.2f} s at the fd limit: spinning"
        for c in clients[:4]:                         # free a few fds: the waiting client is served
            c.close()
        assert _greeted(waiting, 5.0), "the server did not accept again by itself"
        clients.append(waiting)
        time.sleep(0.2)
        assert "accepting again" in log.read_text()
    finally:
        for c in clients:
            c.close()
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert proc.returncode == 0, log.read_text()
    assert "Traceback" not in log.read_text()


# -- defect 8: the banner's zero-copy state is what accepted connections use ---------------------

def _read_from(host: str, port: int, out) -> None:
    """In the namespace: negotiate, read 1 MiB (a zero-copy sized reply), report, hold on a moment."""
    try:
        with Client(port, host) as c:
            c.connect()
            out.put(len(c.read(0, MiB)))
            time.sleep(1.0)
    except BaseException as exc:  # noqa: BLE001 - reported to the test
        out.put(repr(exc))


def _accepted_zerocopy(srv, host: str, veth) -> bool:
    import multiprocessing as mp

    out = mp.get_context("fork").Queue()
    proc = veth.run_in_ns(_read_from, host, srv.port, out)
    try:
        assert out.get(timeout=20) == MiB
        (conn,) = srv.server.connections
        return conn.sock.zerocopy
    finally:
        proc.join(10)


def test_the_zerocopy_state_reported_is_what_accepted_connections_use(nbd, impl, veth):
    import netimpl

    srv = nbd(host=veth.host_ip)                        # not loopback: the policy allows zero-copy
    assert srv.server.zerocopy is True and srv.server.listener.zerocopy is False
    assert _accepted_zerocopy(srv, veth.host_ip, veth) is True
    srv.stop()

    opts = netimpl.get_impl_opts(impl)
    netimpl.set_impl_opts(impl, enable_zerocopy_send_server=False)
    try:
        srv = nbd(host=veth.host_ip)
        assert srv.server.zerocopy is False
        assert _accepted_zerocopy(srv, veth.host_ip, veth) is False
    finally:
        netimpl.set_impl_opts(impl, opts)

    loop = nbd()
    assert loop.server.zerocopy is False
    with Client(loop.port) as c:
        c.connect()
        assert wait_for(lambda: len(loop.server.connections) == 1)
        assert next(iter(loop.server.connections)).sock.zerocopy is False


def test_the_banner_says_zerocopy_on_where_accepted_connections_use_it(impl, veth):
    proc = subprocess.Popen([sys.executable, "-m", "netimpl.nbd", "--impl", impl, "--host", veth.host_ip,
                             "--port", "0", "--size", "16M"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        banner = proc.stdout.readline()
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert "zero-copy on for replies >= 65536 bytes" in banner, (banner, err)
    assert proc.returncode == 0, err


# -- defect 4 and flow control: replies a client does not read are bounded ----------------------

def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.parametrize("kind", ["memory", "file"])
def test_a_client_that_never_reads_its_replies_cannot_grow_the_server(impl, tmp_path, kind):
    """800 pipelined 1 MiB READs, never read: unbounded, that was 800 MiB of replies in the server."""
    args = ["--size", "64M"]
    if kind == "file":
        disk = tmp_path / "disk.img"
        with open(disk, "wb") as f:
            f.truncate(64 * MiB)
        args = ["--size", "0", "--export", f"={disk}"]
    proc = subprocess.Popen([sys.executable, "-m", "netimpl.nbd", "--impl", impl, "--host", "127.0.0.1",
                             "--port", "0", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        port = int(re.search(r"listening on 127\.0\.0\.1:(\d+)", proc.stdout.readline()).group(1))
        with Client(port) as c:
            c.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
            c.connect()
            time.sleep(0.2)
            base = _rss_mib(proc.pid)
            c.s.sendall(read_requests(800, MiB, 64 * MiB))
            growth, cpu0, t0 = [], _cpu_seconds(proc.pid), time.monotonic()
            for _ in range(20):
                time.sleep(0.1)
                growth.append(_rss_mib(proc.pid) - base)
                if growth[-1] > 200:
                    break
            cpu, wall = _cpu_seconds(proc.pid) - cpu0, time.monotonic() - t0
            print(f"{impl} {kind}: RSS growth with 800 unread 1 MiB replies: {max(growth):.0f} MiB")
            assert max(growth) < 64, f"the server grew by {max(growth):.0f} MiB for one client's unread replies"
            assert cpu < 0.5 * wall, f"{cpu:.2f} s of CPU in {wall:.2f} s while the client reads nothing"
            c.s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        time.sleep(1.0)                               # it left: what it made the server hold is gone
        left = _rss_mib(proc.pid) - base
        assert left <= 24, f"the server still holds {left:.0f} MiB after the client left (16 MiB pool at most)"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "Traceback" not in err, err


@pytest.mark.parametrize("kind", ["memory", "file"])
def test_a_held_connection_goes_on_when_its_replies_drain_and_loses_nothing(nbd, tmp_path, kind):
    from netimpl.nbd.connection import IOV_COST, MAX_UNSENT_BYTES

    data = os.urandom(64 * MiB)
    if kind == "file":
        path = tmp_path / "disk.img"
        path.write_bytes(data)
        store = open_file_store(str(path))
    else:
        store = MemoryStore(64 * MiB)
        store.write(0, memoryview(data), fua=False)
    srv = nbd({"": store})
    other = Client(srv.port)
    other.connect()
    with Client(srv.port) as c:
        c.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
        c.connect(structured=True)
        assert wait_for(lambda: len(srv.server.connections) == 2)
        c.s.sendall(read_requests(96, MiB, 64 * MiB))
        conn = next(x for x in srv.server.connections if x.session and x.session.structured)
        assert wait_for(lambda: conn._held), "the connection never held back"
        time.sleep(0.3)
        unsent = conn.sock.queued_bytes
        assert MAX_UNSENT_BYTES - 2 * MiB <= unsent <= MAX_UNSENT_BYTES + MiB + 100 * IOV_COST, unsent
        assert other.read(0, 4096) == data[:4096]              # another client is served meanwhile
        for i in range(96):
            off = (i % 64) * MiB
            assert c.reply(MiB) == (1 + i, 0, data[off:off + MiB]), i
        assert not conn._held
        assert c.read(5, 3) == data[5:8]
    other.close()


def test_a_flood_of_tiny_replies_is_bounded_too(nbd):
    import threading

    from netimpl.nbd.connection import IOV_COST, MAX_UNSENT_BYTES

    srv = nbd()
    count = 8 * MAX_UNSENT_BYTES // IOV_COST        # 8 MiB of replies: more than the kernel's buffers hold
    with Client(srv.port) as c:
        c.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
        c.connect()
        assert wait_for(lambda: len(srv.server.connections) == 1)
        (conn,) = srv.server.connections
        sender = threading.Thread(target=c.s.sendall, args=(struct.pack(">IHHQQI", REQ_MAGIC, 0, 3, 9, 0, 0)
                                                            * count,), daemon=True)
        sender.start()
        assert wait_for(lambda: conn._held), "a flood of FLUSH replies never held the connection"
        assert conn._iovs * IOV_COST <= MAX_UNSENT_BYTES + IOV_COST
        got = c.recv_exact(16 * count)
        sender.join(10)
        assert got == struct.pack(">IIQ", SIMPLE_MAGIC, 0, 9) * count
        assert not conn._held
        assert c.read(0, 8) == bytes(8)


def test_a_held_client_that_resets_is_dropped(nbd, tmp_path):
    srv = nbd({"": MemoryStore(64 * MiB)})
    c = Client(srv.port)
    c.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
    c.connect()
    assert wait_for(lambda: len(srv.server.connections) == 1)
    (conn,) = srv.server.connections
    c.s.sendall(read_requests(64, MiB, 64 * MiB))
    assert wait_for(lambda: conn._held)
    c.s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()                                                  # RST, with replies unsent
    assert wait_for(lambda: not srv.server.connections), "the server kept a reset client that it held"


def test_a_large_batch_of_replies_goes_out_in_requests_of_bounded_size(nbd):
    """A request sent in many pieces costs the backend a walk over its sent iovecs per piece: keep them short."""
    from netimpl.nbd.connection import MAX_REPLY_IOVS

    srv = nbd()
    with Client(srv.port) as c:
        c.connect()
        assert wait_for(lambda: len(srv.server.connections) == 1)
        (conn,) = srv.server.connections
        sizes = []
        queue = conn.sock.writev_async

        def writev_async(req):
            sizes.append(len(req.bufs))
            queue(req)

        conn.sock.writev_async = writev_async
        c.s.sendall(struct.pack(">IHHQQI", REQ_MAGIC, 0, 3, 9, 0, 0) * 5000)
        assert c.recv_exact(16 * 5000) == struct.pack(">IIQ", SIMPLE_MAGIC, 0, 9) * 5000
    assert sum(sizes) == 5000 and max(sizes) <= MAX_REPLY_IOVS, sizes


@pytest.mark.parametrize("bad,exc", [("soon", TypeError), (-1, ValueError)])
def test_a_bad_poll_timeout_is_refused_naming_it_while_a_client_negotiates(impl, bad, exc):
    from netimpl.nbd import NbdServer

    server = NbdServer({"": MemoryStore(MiB)}, "127.0.0.1", 0, impl=impl)
    try:
        with Client(server.address[1]) as c:
            while not server.connections:
                server.poll(0.01)                           # a negotiation deadline is now pending
            with pytest.raises(exc, match=repr(bad)):
                server.poll(bad)
            for _ in range(5):
                server.poll(0.01)
            assert c.greeting() == 3                        # and the server goes on
    finally:
        server.close()


@pytest.fixture
def small_send_buffers(impl):
    """Accepted sockets get a 64 KiB SO_SNDBUF: what the kernel takes off the server's hands is small."""
    import netimpl

    opts = netimpl.get_impl_opts(impl)
    netimpl.set_impl_opts(impl, send_buf_size=64 << 10)
    yield
    netimpl.set_impl_opts(impl, opts)


def test_a_client_that_sends_options_and_reads_no_replies_is_bounded_too(nbd, small_send_buffers):
    import threading

    from netimpl.nbd.connection import IOV_COST, MAX_UNSENT_BYTES

    srv = nbd(handshake_timeout=None)
    count = 2 * MAX_UNSENT_BYTES // (2 * IOV_COST)             # NBD_OPT_LIST: two replies each
    with Client(srv.port) as c:
        c.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
        c.greeting()
        assert wait_for(lambda: len(srv.server.connections) == 1)
        (conn,) = srv.server.connections
        sender = threading.Thread(target=c.s.sendall, args=(struct.pack(">QII", IHAVEOPT, OPT["LIST"], 0)
                                                            * count,), daemon=True)
        sender.start()
        assert wait_for(lambda: conn._held), "a flood of NBD_OPT_LIST never held the connection"
        time.sleep(0.2)
        assert conn.sock.queued_bytes + conn._iovs * IOV_COST <= MAX_UNSENT_BYTES + 4096
        first = c.replies_until_final()                       # one LIST's replies; every other is the same
        assert [r for r, _ in first] == [REP_SERVER, REP_ACK]
        one = b"".join(struct.pack(">QIII", REP_MAGIC, OPT["LIST"], r, len(d)) + d for r, d in first)
        assert c.recv_exact(len(one) * (count - 1)) == one * (count - 1)
        sender.join(10)
        assert not conn._held
        c.go("")
        assert c.read(0, 8) == bytes(8)


class _ResetOnSend:
    """The posix syscall seam with every send failing as if the client had reset the connection."""

    def __init__(self, real):
        self._real = real
        self.recv_into = real.recv_into
        self.readv = real.readv
        self.recv_errqueue = real.recv_errqueue

    @staticmethod
    def sendmsg(s, iovs, ancdata, flags):
        raise ConnectionResetError(104, "Connection reset by peer")


@pytest.mark.parametrize("phase", ["negotiation", "transmission"])
def test_a_send_failing_in_the_middle_of_a_batch_drops_the_client_cleanly(caplog, phase):
    """The failure completes the replies at once, inside the connection's own work: it must not trip on itself.

    posix only: its syscall seam scripts the failure (uring sends from its ring).
    """
    from .conftest import ThreadServer

    srv = ThreadServer({"": MemoryStore(MiB)}, "posix", handshake_timeout=None)
    try:
        _send_fails_in_a_batch(srv, phase)
    finally:
        srv.stop()
    assert "internal error" not in caplog.text, caplog.text


def _send_fails_in_a_batch(srv, phase):
    with Client(srv.port) as good, Client(srv.port) as bad:
        good.connect()
        if phase == "negotiation":
            bad.greeting()
        else:
            bad.connect()
        assert wait_for(lambda: len(srv.server.connections) == 2)
        conn = next(c for c in srv.server.connections if c.peer.endswith(f":{bad.s.getsockname()[1]}"))
        conn.sock._sys = _ResetOnSend(conn.sock._sys)
        if phase == "negotiation":
            bad.s.sendall(struct.pack(">QII", IHAVEOPT, OPT["LIST"], 0) * 500)   # 1000 replies in one go
        else:
            bad.s.sendall(struct.pack(">IHHQQI", REQ_MAGIC, 0, 3, 9, 0, 0) * 2000)
        assert wait_for(lambda: conn not in srv.server.connections), "the server kept the failed client"
        assert good.read(0, 8) == bytes(8)
    assert conn.sock.closed
