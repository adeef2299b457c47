"""The NBD target under hostile and careless clients.

* Unread replies (defect 4): a client pipelines large READs and reads no
  reply. The server's resident set stays bounded, for file exports (replies
  read into buffers) as for memory exports (replies are slices of the
  store), and a good client is still served.
* Released on close (defect 5): once a client has left, its reply buffers
  are freed at once, not when the cyclic collector happens to run.
* Bad input: a seeded fuzzer mutates plausible conversations (handshake
  and transmission); the server survives, drops what breaks framing, and
  keeps serving a good client between cases.
* Slow handshakes (defect 7): a client that never finishes negotiating is
  dropped after the negotiation timeout; one that finished and idles is not.
* The fd limit (defect 6): with RLIMIT_NOFILE reached the server neither
  floods its log nor spins, and serves again by itself once fds free up.
* The banner (defect 8) says whether zero-copy is in force for clients.

The servers run as ``python -m netimpl.nbd`` in a child process (their RSS,
CPU time, log and fd limit are their own), except the fuzzer's, which runs
in a thread of this process so that its errors fail the case.
"""

from __future__ import annotations

import os
import random
import re
import resource
import signal
import socket
import struct
import subprocess
import sys
import time

import pytest

from netimpl.nbd import MemoryStore
from tests.nbd.client import CMD, IHAVEOPT, OPT, REQ_MAGIC, Client
from tests.nbd.conftest import ThreadServer

from .conftest import backend_params, cpu_of, rss_of, scale

MiB = 1 << 20


class NbdProcess:
    """``python -m netimpl.nbd`` in a child process, its log in a file; :meth:`stop` checks a clean exit."""

    def __init__(self, tmp_path, impl: str, *args: str, host: str = "127.0.0.1", nofile: int = 0) -> None:
        self.log_path = tmp_path / f"nbd-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115 - the child's stderr until stop()
        limit = (lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))) if nofile else None
        self.proc = subprocess.Popen([sys.executable, "-m", "netimpl.nbd", "--host", host, "--port", "0",
                                      "--impl", impl, *args], stdout=subprocess.PIPE, stderr=self._log,
                                     text=True, preexec_fn=limit, cwd=os.getcwd())  # noqa: PLW1509 - setrlimit only
        self.banner = self.proc.stdout.readline()
        m = re.search(r"listening on \S+:(\d+)", self.banner)
        if not m:
            self.stop(check=False)
            raise AssertionError(f"no startup line: {self.banner!r}; log: {self.log()!r}")
        self.port = int(m.group(1))
        self.host = host

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text()

    def client(self, **kw) -> Client:
        return Client(self.port, host=self.host, **kw)

    def stop(self, check: bool = True) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, _ = self.proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        self._log.close()
        if check:
            assert self.proc.returncode == 0, (self.proc.returncode, self.log()[-2000:])
            assert "Traceback" not in self.log(), self.log()[-4000:]
        return out


@pytest.fixture
def nbd_proc(tmp_path):
    started: list[NbdProcess] = []

    def start(impl: str, *args: str, **kw) -> NbdProcess:
        srv = NbdProcess(tmp_path, impl, *args, **kw)
        started.append(srv)
        return srv

    yield start
    failures = []
    for srv in started:
        try:
            srv.stop()
        except AssertionError as exc:
            failures.append(exc)
    if failures:
        raise failures[0]


def good_client_round_trip(port: int, host: str = "127.0.0.1", export: str = "", seed: int = 0) -> int:
    """Connect, write a block, read it back; returns the bytes verified."""
    rng = random.Random(seed)
    data = rng.randbytes(4096)
    offset = rng.randrange(0, 1024) * 4096
    with Client(port, host=host, timeout=10) as c:
        c.connect(export)
        assert c.write(offset, data) == 0
        assert c.read(offset, len(data)) == data
        c.send_request("DISC")
    return 2 * len(data)


def _sparse_file(tmp_path, size: int) -> str:
    path = tmp_path / "export.img"
    with open(path, "wb") as f:
        f.truncate(size)
    return str(path)


# -- unread replies, and their release on close ------------------------------------------------

@pytest.mark.parametrize("export", ["memory", "file"])
@pytest.mark.parametrize("impl", backend_params(mixed=False))
def test_unread_replies_keep_server_memory_bounded(nbd_proc, tmp_path, ledger, impl, export):
    size = 256 * MiB
    srv = nbd_proc(impl, "--size", str(size), "--export", f"file={_sparse_file(tmp_path, size)}")
    name = "" if export == "memory" else "file"
    nreads = scale(640, 2048)                        # 640 MiB (2 GiB) of replies if nothing holds back
    with srv.client() as c:
        c.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
        c.connect(name)
        for i in range(0, 64 * MiB, 4 * MiB):      # real pages behind the memory export's replies
            assert c.write(i, b"\x5a" * 4 * MiB, handle=i) == 0
        base = rss_of(srv.pid)
        for i in range(nreads):
            c.send_request("READ", (i * MiB) % (64 * MiB), MiB, handle=i)
        peak = base
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            peak = max(peak, rss_of(srv.pid))
            time.sleep(0.05)
        ledger.fault(impl, "unread NBD replies", nreads)
        grown = peak - base
        assert grown < 256 * MiB, (f"{export} export: server RSS grew by {grown / MiB:.0f} MiB for "
                                   f"{nreads} unread 1 MiB replies")
        # meanwhile another client is served as usual
        ledger.verified(impl, good_client_round_trip(srv.port, export=name))
        c.s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    ledger.verified(impl, good_client_round_trip(srv.port, export=name, seed=1))


@pytest.mark.parametrize("impl", backend_params(mixed=False))
def test_a_departed_client_s_reply_buffers_are_freed_at_once(nbd_proc, tmp_path, ledger, impl):
    size = 256 * MiB
    srv = nbd_proc(impl, "--size", "0", "--export", f"file={_sparse_file(tmp_path, size)}")
    n = 256

    def burst() -> None:
        with srv.client() as c:
            c.connect("file")
            for i in range(n):
                c.send_request("READ", i * MiB, MiB, handle=i)
            for i in range(n):
                h, err, data = c.reply(MiB)
                assert (h, err, len(data)) == (i, 0, MiB)
            c.send_request("DISC")
        ledger.verified(impl, n * MiB)

    burst()                          # warms the server's buffer pool
    time.sleep(0.5)
    base = rss_of(srv.pid)
    burst()
    time.sleep(1.0)                  # the server is idle now: nothing makes the cyclic collector run
    held = rss_of(srv.pid) - base
    assert held < 48 * MiB, f"{held / MiB:.0f} MiB still held 1 s after the client left"


# -- bad input --------------------------------------------------------------------------------

def _option(rng: random.Random) -> bytes:
    kind = rng.choice(["GO", "INFO", "EXPORT_NAME", "LIST", "STRUCTURED_REPLY", "SET_META_CONTEXT",
                       "STARTTLS", "ABORT", "unknown"])
    if kind in ("GO", "INFO"):
        name = rng.choice([b"", b"nope", os.urandom(rng.randrange(0, 40))])
        infos = [rng.randrange(0, 6) for _ in range(rng.randrange(0, 4))]
        data = struct.pack(">I", len(name)) + name + struct.pack(">H", len(infos)) + b"".join(
            struct.pack(">H", i) for i in infos)
    elif kind == "EXPORT_NAME":
        data = rng.choice([b"", b"nope"])
    elif kind == "SET_META_CONTEXT":
        q = b"base:allocation"
        data = struct.pack(">I", 0) + struct.pack(">I", 1) + struct.pack(">I", len(q)) + q
    else:
        data = b""
    opt = OPT.get(kind, rng.choice([0, 4, 9, 11, 0x7FFFFFFF, 0xFFFFFFFF]))
    return struct.pack(">QII", IHAVEOPT, opt, len(data)) + data


def _request(rng: random.Random, export_size: int) -> bytes:
    cmd = rng.choice([*CMD.values(), 8, 99, 0xFFFF])
    offset = rng.choice([0, rng.randrange(0, export_size), export_size - 512, export_size, 2**63, 2**64 - 1])
    length = rng.choice([0, 1, 512, 65536, MiB, 32 * MiB, 32 * MiB + 1, 2**32 - 1])
    flags = rng.choice([0, 0, 1, 2, 4, 8, rng.getrandbits(16)])
    head = struct.pack(">IHHQQI", REQ_MAGIC, flags, cmd, rng.getrandbits(64), offset, length)
    payload = os.urandom(min(length, 4096)) if cmd == CMD["WRITE"] and rng.random() < 0.7 else b""
    return head + payload


def _conversation(rng: random.Random, export_size: int) -> bytes:
    parts = [struct.pack(">I", rng.choice([3, 3, 1, 0, 2, rng.getrandbits(32)]))]
    parts += [_option(rng) for _ in range(rng.randrange(0, 4))]
    if rng.random() < 0.7:           # mostly reach transmission, where the requests are
        parts.append(struct.pack(">QII", IHAVEOPT, OPT["GO"], 6) + b"\0" * 6)
        parts += [_request(rng, export_size) for _ in range(rng.randrange(1, 8))]
    return b"".join(parts)


def _mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    how = rng.choice(["none", "flip", "flip", "truncate", "insert", "field", "repeat"])
    if how == "flip":
        for _ in range(rng.randrange(1, 9)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    elif how == "truncate":
        del b[rng.randrange(len(b)):]
    elif how == "insert":
        at = rng.randrange(len(b) + 1)
        b[at:at] = os.urandom(rng.randrange(1, 64))
    elif how == "field" and len(b) >= 8:
        at = rng.randrange(len(b) - 4)
        b[at:at + 4] = struct.pack(">I", rng.choice([0, 0xFFFFFFFF, 0x7FFFFFFF, 0x80000000]))
    elif how == "repeat":
        at = rng.randrange(len(b))
        b += b[at:at + rng.randrange(1, 200)] * rng.randrange(1, 5)
    return bytes(b)


def _fuzz_one(port: int, data: bytes, rng: random.Random) -> None:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        s.setblocking(False)
        view = memoryview(data)
        while view:                  # in random pieces, the server's replies read as they come
            piece = view[:rng.choice([1, 3, 16, 100, len(view)])]
            try:
                sent = s.send(piece)
                view = view[sent:]
            except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                break
            try:
                s.recv(1 << 20)
            except (BlockingIOError, ConnectionResetError):
                pass
        deadline = time.monotonic() + 0.02
        while time.monotonic() < deadline:
            try:
                if not s.recv(1 << 20):
                    break
            except BlockingIOError:
                time.sleep(0.002)
            except OSError:
                break
        if rng.random() < 0.3:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    finally:
        s.close()


@pytest.mark.parametrize("impl", backend_params(mixed=False))
def test_fuzzed_handshakes_and_requests_leave_the_server_serving(ledger, impl):
    cases = scale(200, 3000)
    export_size = 4 * MiB
    srv = ThreadServer({"": MemoryStore(export_size)}, impl)
    try:
        rng = random.Random(0xF022 + len(impl))
        for i in range(cases):
            _fuzz_one(srv.port, _mutate(rng, _conversation(rng, export_size)), rng)
            assert srv.error is None, f"case {i}: the server died: {srv.error!r}"
            if i % 25 == 24:
                ledger.verified(impl, good_client_round_trip(srv.port, seed=i))
        ledger.fault(impl, "fuzzed NBD sessions", cases)
        deadline = time.monotonic() + 5
        while len(srv.server.connections) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not srv.server.connections, f"{len(srv.server.connections)} fuzzed connections never ended"
        ledger.verified(impl, good_client_round_trip(srv.port, seed=cases))
    finally:
        srv.stop()
        for store in srv.exports.values():
            store.close()


# -- slow handshakes --------------------------------------------------------------------------

def _negotiation_timeout_flag() -> str:
    """The command line's flag for the negotiation timeout, found in --help (its name is the NBD target's)."""
    out = subprocess.run([sys.executable, "-m", "netimpl.nbd", "--help"], capture_output=True, text=True,
                         timeout=30, check=True).stdout
    flags = re.findall(r"(--[\w-]*(?:handshake|negotiat)[\w-]*)", out)
    assert flags, "python -m netimpl.nbd --help names no negotiation (handshake) timeout flag"
    return flags[0]


def _dropped(c: Client, timeout: float) -> bool:
    """True when the server closes the connection within ``timeout``; what it sends first is read and ignored."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        c.s.settimeout(left)
        try:
            if not c.s.recv(4096):
                return True
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False
    return False


@pytest.mark.parametrize("impl", backend_params(mixed=False))
def test_clients_that_never_finish_negotiating_are_dropped(nbd_proc, ledger, impl):
    srv = nbd_proc(impl, "--size", "16M", _negotiation_timeout_flag(), "1")
    silent = srv.client()                          # says nothing at all
    halfway = srv.client()
    halfway.greeting()
    halfway.s.sendall(struct.pack(">Q", IHAVEOPT)[:5])     # part of an option header, then nothing
    options_only = srv.client()
    options_only.greeting()
    options_only.option(OPT["STRUCTURED_REPLY"])
    assert options_only.option_reply()[1] == 1      # ACK, and never GO
    done = srv.client()
    done.connect()                                   # finished negotiating: idles in transmission
    try:
        for what, c in (("silent", silent), ("halfway", halfway), ("options only", options_only)):
            assert _dropped(c, timeout=5), f"the {what} client was not dropped"
        ledger.fault(impl, "stalled NBD handshake", 3)
        assert not done.is_closed(timeout=0.5), "a client in transmission was dropped for idling"
        done.s.settimeout(10)
        assert done.read(0, 4096) == bytes(4096)
    finally:
        for c in (silent, halfway, options_only, done):
            c.close()
    ledger.verified(impl, good_client_round_trip(srv.port))


# -- the fd limit -----------------------------------------------------------------------------

@pytest.mark.parametrize("impl", backend_params(mixed=False))
def test_at_the_fd_limit_the_server_neither_floods_nor_spins_and_recovers(nbd_proc, ledger, impl):
    srv = nbd_proc(impl, "--size", "16M", nofile=48)
    held: list[Client] = []
    stuck = None
    try:
        for _ in range(64):
            c = srv.client(timeout=1.0)
            try:
                c.connect()
            except (TimeoutError, OSError):
                stuck = c                             # accepted by the kernel, not by the server: at the limit
                break
            held.append(c)
        assert stuck is not None, f"{len(held)} connections and the fd limit was never reached"
        ledger.fault(impl, "RLIMIT_NOFILE reached")
        before_cpu, before_log = cpu_of(srv.pid), srv.log().count("\n")
        time.sleep(2.0)
        spent = cpu_of(srv.pid) - before_cpu
        lines = srv.log().count("\n") - before_log
        assert lines <= 5, f"{lines} log lines in 2 s at the fd limit: {srv.log()[-500:]!r}"
        assert spent < 0.5, f"the server used {spent:.2f} s of CPU in 2 s at the fd limit"
        for c in held[:4]:
            c.close()
        del held[:4]
        stuck.close()                                 # its half-done handshake is void
        ledger.verified(impl, good_client_round_trip(srv.port))
    finally:
        for c in held:
            c.close()
        if stuck is not None:
            stuck.close()


# -- through the impaired link ------------------------------------------------------------

def _nbd_through_link(host: str, port: int, base: int, nbytes: int, seed: int, conn) -> None:
    """In the client namespace: pipelined 1 MiB writes of a seeded stream at ``base``, read back, compared."""
    from .peers import first_difference, stream

    out = {"error": "", "verified": 0}
    try:
        data = stream(seed, nbytes)
        with Client(port, host=host, timeout=30) as c:
            c.connect(structured=True)
            for off in range(0, nbytes, MiB):
                c.send_request("WRITE", base + off, MiB, handle=off, data=data[off:off + MiB])
            for _ in range(0, nbytes, MiB):
                _h, err, _ = c.reply()
                assert err == 0, f"a write failed: {err}"
            for off in range(0, nbytes, MiB):
                c.send_request("READ", base + off, MiB, handle=off)
            got = {}
            for _ in range(0, nbytes, MiB):
                h, err, block = c.reply(MiB)
                assert err == 0, f"a read failed: {err}"
                got[h] = block
            back = b"".join(got[off] for off in range(0, nbytes, MiB))
            at = first_difference(data, back)
            assert at == -1, f"read back differs from what was written at offset {at}"
            out["verified"] = 2 * nbytes
            c.send_request("DISC")
    except Exception as exc:  # noqa: BLE001 - any failure is the report
        out["error"] = repr(exc)
    conn.send(out)


@pytest.mark.parametrize("impl", backend_params(mixed=False))
def test_nbd_through_an_impaired_link_every_byte_right(nbd_proc, link, ledger, impl):
    """Writes and reads, pipelined, through loss, duplication, reordering and corruption; zero-copy replies."""
    from .peers import Peers

    nbytes = scale(8, 64) * MiB
    srv = nbd_proc(impl, "--size", str(2 * nbytes), host=link.server_ip)
    link.impair(loss=0.02, duplicate=0.01, reorder=0.02, corrupt=0.01, delay=0.0005, jitter=0.001, seed=7)
    peers = Peers(link)
    try:
        for k in range(2):              # two clients, each on its own half of the export
            peers.start(_nbd_through_link, link.server_ip, srv.port, k * nbytes, nbytes, k + 1)
        for r in peers.reports(60):
            assert r is not None, "a client did not report in time"
            assert not r["error"], r["error"]
            ledger.verified(impl, r["verified"])
    finally:
        peers.close()


# -- the banner -------------------------------------------------------------------------------

@pytest.mark.parametrize("impl", backend_params(mixed=False))
def test_the_banner_tells_whether_clients_get_zero_copy(nbd_proc, link, impl):
    """On the veth (not loopback) accepted connections use zero-copy, so the banner must not say off."""
    srv = nbd_proc(impl, "--size", "16M", host=link.server_ip)
    assert "zero-copy off" not in srv.banner, srv.banner
    local = nbd_proc(impl, "--size", "16M")
    assert "zero-copy on" not in local.banner, f"a loopback listener never uses zero-copy: {local.banner}"
