"""The bench's own logic: a quick run produces figures for every contender, in the documented schema."""

from __future__ import annotations

import io
import json
import math
import signal
import socket
import subprocess
import sys
import threading

import pytest

import netimpl
from netimpl import features
from netimpl.bench import contenders, floor, report, unavailable
from netimpl.bench.workloads import BY_NAME, WORKLOADS
from tests.conftest import need

ONLY = ["bulk-64k", "read-qd1", "read-16x32"]


def bench(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "netimpl", "bench", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench")
    out = bench("--quick", "--seconds", "0.15", *sum((["--only", w] for w in ONLY), []),
                "--json", str(d / "b.json"), "--plot", str(d / "b.png"))
    assert out.returncode == 0, out.stderr[-3000:]
    return out, json.loads((d / "b.json").read_text()), d / "b.png"


def test_every_contender_is_measured_on_every_workload(quick_run):
    out, doc, _ = quick_run
    names = contenders()
    assert {"asyncio", "uvloop", "blocking"} <= set(names)
    assert [c for c in names if c.startswith("netimpl:")] == [f"netimpl:{i.name}" for i in netimpl.impls() if i.available]
    assert f"netimpl-aio:{netimpl.default_impl()}" in names  # the default backend inside an asyncio loop
    assert f"netimpl-next:{netimpl.default_impl()}" in names  # and reading with recv_next
    need(floor.unavailable())
    assert names[0] == report.FLOOR
    if not floor.unavailable("uring"):
        assert names[1] == report.URING_FLOOR  # the io_uring design's floor next to it
    assert doc["contenders"] == names
    got = {(r["workload"], r["contender"]) for r in doc["results"]}
    assert got == {(w, c) for w in ONLY for c in names}
    for c in names:
        assert c in out.stdout


def test_the_floor_is_measured_on_every_workload_and_shown_against_itself(quick_run):
    out, doc, _ = quick_run
    need(floor.unavailable())
    assert contenders()[0] == report.FLOOR and unavailable() == []
    assert {r["workload"] for r in doc["results"] if r["contender"] == report.FLOOR} == set(ONLY)
    assert "lower is better" in out.stdout
    rows = [line.split() for line in out.stdout.splitlines() if line.startswith(f"  {report.FLOOR} ")]
    assert len(rows) == len(ONLY) and all("1.00x" in row for row in rows)


def test_json_schema_and_figures_are_sane(quick_run):
    _, doc, _ = quick_run
    assert doc["schema"] == report.SCHEMA_VERSION and doc["baseline"] == "asyncio" and doc["floor"] == "c-epoll"
    assert set(doc["machine"]) == {"cpus", "kernel", "python"}
    assert doc["config"] == {"rounds": 1, "seconds": 0.15, "quick": True}
    assert [w["name"] for w in doc["workloads"]] == ONLY
    for r in doc["results"]:
        w = BY_NAME[r["workload"]]
        assert len(r["runs"]) == 1
        keys = {w.metric, "cpu_us", "user_us"} | ({"p50_us", "p99_us"} if w.latency else set())
        assert set(r["median"]) == keys
        for k in keys:
            v = r["median"][k]
            assert isinstance(v, float) and math.isfinite(v), (r["workload"], r["contender"], k, v)
            # a server blocked in send may spend no measurable user time in a short window
            assert v >= 0 if k == "user_us" else v > 0, (r["workload"], r["contender"], k, v)
        assert r["median"]["user_us"] <= r["median"]["cpu_us"]
        if w.latency:
            assert r["median"]["p99_us"] >= r["median"]["p50_us"]


def test_plot_is_a_png(quick_run):
    _, _, png = quick_run
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_arguments_are_refused():
    assert bench("--only", "nonsense").returncode == 2
    assert bench("--rounds", "0").returncode == 2
    out = bench("--impl", "nonexistent", "--only", "read-qd1")
    assert out.returncode != 0 and "nonexistent" in out.stderr


def test_table_ratios_are_against_asyncio():
    w = BY_NAME["read-16x32"]
    results = {w.name: {"asyncio": [{"rps": 100.0, "cpu_us": 4.0}, {"rps": 300.0, "cpu_us": 2.0}],
                        "netimpl:posix": [{"rps": 400.0, "cpu_us": 1.0, "user_us": 0.25}]}}
    buf = io.StringIO()
    report.table(results, [w], ["netimpl:posix", "asyncio"], buf)
    row = next(line for line in buf.getvalue().splitlines() if "netimpl:posix" in line).split()
    # asyncio's medians are 200 req/s and 3 µs: netimpl is 2x the rate at 0.33x the CPU
    assert row[1:6] == ["400", "2.00x", "1.00", "0.33x", "0.25"]  # and how much of the CPU was user time
    doc = report.to_json(results, [w], ["netimpl:posix", "asyncio"], {"rounds": 2})
    assert doc["results"][1]["median"] == {"rps": 200.0, "cpu_us": 3.0}


def test_workload_names_are_unique_and_shaped_like_the_issue():
    assert len(BY_NAME) == len(WORKLOADS)
    assert {w.chunk for w in WORKLOADS if w.mode == "bulk"} == {4096, 65536, 1 << 20}
    many = BY_NAME["many-1000"]
    assert many.conns == 1000 and many.active == 50


def test_table_shows_cpu_as_a_multiple_of_the_floor():
    w = BY_NAME["small-64x8"]
    results = {w.name: {report.FLOOR: [{"rps": 900.0, "cpu_us": 0.5, "user_us": 0.125}],
                        "asyncio": [{"rps": 100.0, "cpu_us": 4.0, "user_us": 2.0}],
                        "netimpl:posix": [{"rps": 400.0, "cpu_us": 1.0, "user_us": 0.25}]}}
    buf = io.StringIO()
    report.table(results, [w], [report.FLOOR, "netimpl:posix", "asyncio"], buf)
    text = buf.getvalue()
    assert any(line.startswith(f"CPU/{report.FLOOR}: ") for line in text.splitlines()[:2])  # what the column means
    head = next(line for line in text.splitlines() if "contender" in line)
    assert f"CPU/{report.FLOOR} ↓  user µs/op" in head  # the floor's multiple just before the user time
    rows = {line.split()[0]: line.split() for line in text.splitlines() if line.startswith("  ") and "contender" not in line}
    assert rows["netimpl:posix"][1:7] == ["400", "4.00x", "1.00", "0.25x", "2.00x", "0.25"]
    assert rows["asyncio"][4:6] == ["1.00x", "8.00x"] and rows[report.FLOOR][4:6] == ["0.12x", "1.00x"]
    # no floor measured: the column is left empty and the note is not printed
    del results[w.name][report.FLOOR]
    buf = io.StringIO()
    report.table(results, [w], ["netimpl:posix", "asyncio"], buf)
    assert f"CPU/{report.FLOOR}" not in buf.getvalue()
    row = next(line for line in buf.getvalue().splitlines() if "netimpl:posix" in line).split()
    assert row[1:6] == ["400", "4.00x", "1.00", "0.25x", "0.25"]


def test_without_the_compiled_floor_the_bench_says_so_and_leaves_it_out(monkeypatch):
    monkeypatch.setattr(floor, "lib", None)
    monkeypatch.setattr(floor, "IMPORT_ERROR", "No module named 'netimpl.bench._floor'")
    assert report.FLOOR not in contenders() and report.URING_FLOOR not in contenders()
    assert unavailable() == [(f"{report.FLOOR} and {report.URING_FLOOR} are unavailable: the C floor server is not built "
                              f"(No module named 'netimpl.bench._floor'); {features.INSTALL_HINT}.")]
    for kind in floor.KINDS:
        with pytest.raises(RuntimeError, match="not built"):
            floor.FloorServer(0, -1, "rr", 64, 64, kind=kind)


def test_without_io_uring_the_bench_leaves_the_uring_floor_out_and_says_why(monkeypatch):
    need(floor.unavailable())
    from netimpl.registry import ImplInfo

    monkeypatch.setattr(netimpl, "impls", lambda: [ImplInfo("uring", 10, False, "io_uring is disabled system-wide"),
                                                   ImplInfo("posix", 0, True, "")])
    names = contenders()
    assert names[0] == report.FLOOR and report.URING_FLOOR not in names
    assert unavailable() == [(f"{report.URING_FLOOR} is unavailable: the io_uring floor needs what backend uring "
                              "needs: io_uring is disabled system-wide.")]
    with socket.create_server(("127.0.0.1", 0)) as ls, pytest.raises(RuntimeError, match="disabled system-wide"):
        floor.FloorServer(ls.fileno(), -1, "rr", 64, 64, kind="uring")


def test_floor_kinds_are_named():
    with pytest.raises(ValueError, match="'kqueue'"):
        floor.unavailable("kqueue")


@pytest.mark.parametrize("kind", list(floor.KINDS))
def test_floor_server_refuses_bad_arguments(kind):
    need(floor.unavailable(kind))
    with socket.create_server(("127.0.0.1", 0)) as ls:
        with pytest.raises(ValueError, match="'nonsense'"):
            floor.FloorServer(ls.fileno(), -1, "nonsense", 64, 64, kind=kind)
        with pytest.raises(ValueError, match="0"):
            floor.FloorServer(ls.fileno(), -1, "rr", 64, 0, kind=kind)
        with pytest.raises(OSError, match="Bad file descriptor"):
            floor.FloorServer(-5, -1, "rr", 64, 64, kind=kind)
        srv = floor.FloorServer(ls.fileno(), -1, "rr", 64, 64, kind=kind)
        srv.run(0)  # nothing to do: returns at once
        srv.close()
        srv.close()
        with pytest.raises(ValueError, match="closed"):
            srv.run(0)


# -- the floor server speaks each workload's protocol, byte for byte -------------------------------

class ServerProcess:
    """``python -m netimpl.bench.servers NAME ...``, as the runner starts it (unpinned)."""

    def __init__(self, name: str, mode: str, *sizes: int) -> None:
        self.p = subprocess.Popen([sys.executable, "-m", "netimpl.bench.servers", name, mode,
                                   *map(str, sizes)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.p.stdout.readline()
        assert line.strip().isdigit(), line + self.p.stderr.read()
        self.port = int(line)
        self.idle_fds = self.fds()

    def fds(self) -> int:
        import os

        return len(os.listdir(f"/proc/{self.p.pid}/fd"))

    def connect(self) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", self.port))
        s.settimeout(10)
        return s

    def wait_idle(self) -> None:
        """Every connection the clients closed is closed by the server too: its fds are back to idle."""
        import time

        deadline = time.monotonic() + 10
        while self.fds() != self.idle_fds and time.monotonic() < deadline:
            time.sleep(0.01)
        assert self.fds() == self.idle_fds

    def stop(self) -> list:
        """Two CPU marks, then SIGTERM: the server exits 0 and prints them, as the runner expects."""
        import time

        for _ in range(2):
            self.p.send_signal(signal.SIGUSR1)
            time.sleep(0.05)
        self.p.send_signal(signal.SIGTERM)
        out, err = self.p.communicate(timeout=10)
        assert self.p.returncode == 0, err
        marks = json.loads(out.strip().splitlines()[-1])
        assert len(marks) == 2 and all(len(m) == 2 and m[0] >= 0 and m[1] >= 0 for m in marks), marks
        return marks


class FloorProcess(ServerProcess):
    """``python -m netimpl.bench.servers c-epoll ...`` (or ``c-uring``)."""

    def __init__(self, kind: str, mode: str, *sizes: int) -> None:
        need(floor.unavailable(kind))
        super().__init__({"epoll": report.FLOOR, "uring": report.URING_FLOOR}[kind], mode, *sizes)


@pytest.mark.parametrize("name", ["blocking", "asyncio", "netimpl:posix", "netimpl:uring"])
def test_a_python_server_serves_then_stops_on_sigterm_with_its_marks(name):
    """The runner's life cycle for the servers written in Python: one round trip, two CPU marks,
    then SIGTERM with a client still connected. The blocking server once waited on a
    threading.Event that its SIGTERM handler set: a handler that runs while wait() holds the
    Event's lock blocks on it for ever (the bench hung there, once in some hundred runs)."""
    if name == "netimpl:uring":
        need({i.name: i.reason for i in netimpl.impls()}.get("uring", "no backend uring"))
    srv = ServerProcess(name, "rr", 64, 4096)
    try:
        with srv.connect() as s:
            s.sendall(bytes(64))
            assert recv_exactly(s, 4096) == bytes(4096)
            srv.stop()
    finally:
        if srv.p.poll() is None:
            srv.p.kill()
            srv.p.wait()


def recv_exactly(s: socket.socket, n: int) -> bytes:
    got = bytearray()
    while len(got) < n:
        chunk = s.recv(min(n - len(got), 1 << 20))
        assert chunk, f"connection closed after {len(got)} of {n} bytes"
        got += chunk
    return bytes(got)


def assert_quiet(socks: list[socket.socket]) -> None:
    """Nothing more arrives on any of ``socks`` (the server has long answered what it will)."""
    import select

    readable, _, _ = select.select(socks, [], [], 0.1)
    assert readable == [], [s.recv(1 << 16) for s in readable]


@pytest.mark.parametrize("kind", list(floor.KINDS))
@pytest.mark.parametrize("w", [w for w in WORKLOADS if w.mode == "rr"], ids=lambda w: w.name)
def test_floor_answers_each_whole_request_with_one_reply(w, kind):
    srv = FloorProcess(kind, "rr", w.req, w.resp)
    try:
        # up to 100 connections: past the server's first table of 64 fds
        conns = [srv.connect() for _ in range(min(w.conns, 100))]
        for s in conns:  # a request one byte short gets no answer
            s.sendall(bytes(w.req - 1))
        assert_quiet(conns)
        for s in conns:  # its last byte, `depth` whole requests and half of another, in one send
            s.sendall(b"\xff" * (1 + w.depth * w.req + w.req // 2))
        for s in conns:
            assert recv_exactly(s, (1 + w.depth) * w.resp) == bytes((1 + w.depth) * w.resp)
        assert_quiet(conns)
        conns[0].sendall(bytes(w.req - w.req // 2))
        assert recv_exactly(conns[0], w.resp) == bytes(w.resp)

        # More replies than the sockets hold while the client does not read: the server's sends come up
        # short, the rest waits for write space, and every byte still arrives, in order and no more.
        n = min((32 << 20) // w.resp, (8 << 20) // w.req)
        sender = threading.Thread(target=conns[1 % len(conns)].sendall, args=(bytes(n * w.req),))
        sender.start()
        sender.join(20)
        assert recv_exactly(conns[1 % len(conns)], n * w.resp) == bytes(n * w.resp)
        assert_quiet(conns)
        for s in conns:
            s.close()
        srv.wait_idle()
        with srv.connect() as s:  # and it still serves
            s.sendall(bytes(w.req))
            assert recv_exactly(s, w.resp) == bytes(w.resp)
        srv.wait_idle()
    finally:
        if srv.p.poll() is None:
            srv.stop()


@pytest.mark.parametrize("kind", list(floor.KINDS))
@pytest.mark.parametrize("w", [w for w in WORKLOADS if w.mode == "bulk"], ids=lambda w: w.name)
def test_floor_streams_zeros_to_each_client_until_it_goes(w, kind):
    srv = FloorProcess(kind, "bulk", w.chunk)
    try:
        a, b = srv.connect(), srv.connect()
        for s in (a, b, a):
            assert recv_exactly(s, 3 * w.chunk + 1) == bytes(3 * w.chunk + 1)
        a.close()
        assert recv_exactly(b, 2 * w.chunk) == bytes(2 * w.chunk)  # the other client is still served
        b.close()
        srv.wait_idle()
        with srv.connect() as s:
            assert recv_exactly(s, w.chunk) == bytes(w.chunk)
        srv.wait_idle()
    finally:
        srv.stop()
