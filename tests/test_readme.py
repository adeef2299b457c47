"""The README's embedding example: it serves real clients, survives resets, bounds an unread
peer's memory, lets a half-closed peer's replies drain, and ends cleanly on Ctrl-C."""

from __future__ import annotations

import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import netimpl
from tests.conftest import available_impls, need

README = Path(__file__).resolve().parent.parent / "README.md"
LISTEN = 'netimpl.listen("0.0.0.0", 4420)'


def _example() -> str:
    block = re.search(r"## Embedding\n\n```python\n(.*?)```", README.read_text(), re.S).group(1)
    assert LISTEN in block and "while True:" in block and "except KeyboardInterrupt:" in block
    return block


def _read_exactly(c: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = c.recv(min(1 << 20, n - len(out)))
        if not chunk:
            raise EOFError(f"EOF after {len(out)} of {n} bytes")
        out += chunk
    return bytes(out)


@pytest.fixture(params=available_impls())
def served(request):
    """The example serving in a thread of this process (so the test can look at its sockets), per backend."""
    info = next(i for i in netimpl.impls() if i.name == request.param)
    need("" if info.available else f"backend {info.name} unavailable: {info.reason}")
    netimpl.set_default_impl(request.param)
    code = _example().replace(LISTEN, 'netimpl.listen("127.0.0.1", 0)')
    code = code.replace("while True:", "while not stop.is_set():")
    ns: dict = {"stop": threading.Event()}
    server = threading.Thread(target=exec, args=(code, ns), daemon=True)
    server.start()
    for _ in range(500):
        group = ns.get("group")
        if group is not None and group.socks:
            break
        time.sleep(0.01)
    ns["port"] = group.socks[0].getaddr()[1]
    yield ns
    ns["stop"].set()
    server.join(5)
    assert not server.is_alive()


def test_embedding_example_serves_survives_resets_and_drains_half_closed_peers(served):
    port = served["port"]
    with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
        c.sendall(b"hello")
        assert _read_exactly(c, 9) == b"ack:hello"
    for _ in range(5):  # peers that reset their connection: the server must not die
        r = socket.create_connection(("127.0.0.1", port), timeout=5)
        r.sendall(b"x" * 1000)
        r.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        r.close()
    # A half-closed peer gets every reply, then EOF.
    with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
        c.sendall(b"last words")
        c.shutdown(socket.SHUT_WR)
        assert _read_exactly(c, 14) == b"ack:last words"
        assert c.recv(10) == b""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
        c.sendall(b"still here")
        assert _read_exactly(c, 14) == b"ack:still here"


def test_embedding_example_bounds_a_peer_that_never_reads(served):
    group, high = served["group"], served["HIGH"]
    c = socket.create_connection(("127.0.0.1", served["port"]), timeout=5)
    c.setblocking(False)
    chunk = bytes(range(256)) * 256     # the stream: this 64 KiB pattern over and over
    sent = 0
    worst = 0
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:   # push requests without reading a byte of the replies
        try:
            sent += c.send(memoryview(chunk)[sent % len(chunk):])
        except BlockingIOError:
            time.sleep(0.01)
        worst = max([worst] + [s.queued_bytes for s in group.socks])
    assert sent > 3 * high, f"only {sent} bytes went out: the test did not push past the bound"
    # Each reply is at most 4 + 64 KiB: the server stops reading once over HIGH.
    assert worst <= high + 4 + 65536, f"{worst} bytes queued for a peer that reads nothing"
    c.setblocking(True)
    c.shutdown(socket.SHUT_WR)
    got = bytearray()
    while True:                          # now read: everything sent comes back, acked, then EOF
        data = c.recv(1 << 20)
        if not data:
            break
        got += data
    c.close()
    assert got.count(b"ack:") >= 1 and len(got) - 4 * got.count(b"ack:") >= sent * 0.99
    assert got.replace(b"ack:", b"") == (chunk * (sent // len(chunk) + 1))[:sent]


def test_embedding_example_ends_cleanly_on_ctrl_c():
    code = _example().replace(LISTEN, 'netimpl.listen("127.0.0.1", 0)')
    announce = "print(group.socks[0].getaddr()[1], flush=True)\n"
    code = code.replace("try:\n    while True:", announce + "try:\n    while True:")
    code += "print('closed', group.socks, flush=True)\n"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())
        c = socket.create_connection(("127.0.0.1", port), timeout=5)
        c.sendall(b"hi")
        assert _read_exactly(c, 6) == b"ack:hi"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 0 and out.strip() == "closed []" and "Traceback" not in err, (out, err)
    assert c.recv(10) == b""             # its connection was closed, not left open
    c.close()


LINK = re.compile(r"(!?)\[([^\]]*)\]\(([^)\s]+)\)")


def test_links_stay_in_the_tree_and_name_the_file_they_open():
    """The README is also the package description, where relative links cannot resolve: each link is a
    file of the source tree (shipped in the sdist) and its text names that file."""
    root = README.parent
    links = LINK.findall(README.read_text())
    assert links
    for image, text, target in links:
        assert "://" not in target and not target.startswith(("/", "..")), target
        assert (root / target).resolve().is_relative_to(root) and (root / target).is_file(), target
        shown = text.strip("`")
        if image:
            assert target in shown, (text, target)
        else:
            assert target.startswith(shown) or target in shown, (text, target)


def test_the_reference_is_in_the_tree():
    text = README.read_text()
    assert "[docs/api.md](docs/api.md)" in text and "../" not in text


def test_the_nbd_section_says_what_the_default_address_exposes():
    section = README.read_text().split("## A storage target on it", 1)[1].split("\n## ", 1)[0]
    command = next(line for line in section.splitlines() if line.startswith("python -m netimpl.nbd "))
    assert "--host 127.0.0.1" in command
    assert "all interfaces" in section and "no authentication" in section


def test_the_readme_says_what_happens_without_a_c_compiler():
    text = README.read_text()
    assert "C compiler" in text and "python3-dev" in text and "install still" in text
