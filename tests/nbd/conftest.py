"""Fixtures: an NBD server in a thread of this process, or as ``python -m netimpl.nbd``."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading

import pytest

from netimpl.nbd import MemoryStore, NbdServer

from tests.conftest import available_impls, need
from tests.netns.conftest import veth  # noqa: F401 - a veth pair into a namespace, for zero-copy tests


@pytest.fixture(params=available_impls())
def impl(request) -> str:
    return request.param


class ThreadServer:
    """An :class:`NbdServer` created, polled and closed by one thread of its own."""

    def __init__(self, exports, impl, host="127.0.0.1", **kw):
        self.exports = exports
        self._impl = impl
        self._host = host
        self._kw = kw
        self._stop = threading.Event()
        self._ready = threading.Event()
        self.error: BaseException | None = None
        self.server: NbdServer | None = None
        self.requests = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(10), "server thread did not start"
        if self.error:
            raise self.error
        self.port = self.server.address[1]

    def _run(self):
        try:
            self.server = NbdServer(self.exports, self._host, 0, impl=self._impl, **self._kw)
        except BaseException as exc:
            self.error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            self.server.serve(self._stop.is_set, timeout=0.02)
        except BaseException as exc:
            self.error = exc
        finally:
            self.requests = self.server.requests
            self.connections = len(self.server.connections)
            self.server.close()

    def stop(self):
        self._stop.set()
        self._thread.join(10)
        assert not self._thread.is_alive(), "server thread did not stop"
        if self.error:
            raise self.error


@pytest.fixture
def nbd(impl):
    """``start(exports=None, **kw)`` → a running :class:`ThreadServer` (a 16 MiB memory export by default).

    ``kw`` goes to :class:`NbdServer` (``host`` too: 127.0.0.1 by default).
    """
    running = []

    def start(exports=None, **kw):
        srv = ThreadServer(exports or {"": MemoryStore(16 << 20)}, impl, **kw)
        running.append(srv)
        return srv

    yield start
    for srv in running:
        srv.stop()
        for store in srv.exports.values():
            store.close()


class ProcessServer:
    """``python -m netimpl.nbd`` in a child process; :meth:`stop` sends SIGTERM and checks a clean exit."""

    def __init__(self, *args: str):
        self.proc = subprocess.Popen([sys.executable, "-m", "netimpl.nbd", "--host", "127.0.0.1", "--port", "0",
                                      *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.banner = [self.proc.stdout.readline()]
        m = re.search(r"listening on (?:127\.0\.0\.1:(\d+)|unix:(\S+),)", self.banner[0])
        if not m:
            self.proc.kill()
            out, err = self.proc.communicate()
            raise AssertionError(f"no startup line: {self.banner[0]!r} {out!r} {err!r}")
        if m.group(1):
            self.port = int(m.group(1))
            self.uri = f"nbd://127.0.0.1:{self.port}"
        else:
            self.port = 0
            self.uri = f"nbd+unix:///?socket={m.group(2)}"

    def stop(self, sig=signal.SIGTERM) -> tuple[str, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        out, err = self.proc.communicate(timeout=30)
        assert self.proc.returncode == 0, (self.proc.returncode, err)
        assert "Traceback" not in err, err
        assert re.search(r"stopped after \d+ connections, \d+ requests", out), out
        return out, err


@pytest.fixture
def nbd_process(impl):
    """``start(*args)`` → a running :class:`ProcessServer` on backend ``impl``."""
    running = []

    def start(*args: str):
        srv = ProcessServer("--impl", impl, *args)
        running.append(srv)
        return srv

    yield start
    for srv in running:
        srv.stop()


def tool(name: str, package: str) -> str:
    """The path of a client program; skip (fail in CI) when it is not installed."""
    path = shutil.which(name)
    if not path:
        need(f"{name} is not installed (Debian package {package})")
    return path


def run_tool(*argv: str, timeout: float = 180) -> subprocess.CompletedProcess:
    out = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{' '.join(argv)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}"
    return out


@pytest.fixture(scope="session")
def random_image(tmp_path_factory):
    """256 MiB of random data in a file."""
    path = tmp_path_factory.mktemp("nbd") / "random.img"
    with open(path, "wb") as f:
        for _ in range(256):
            f.write(os.urandom(1 << 20))
    return path


@pytest.fixture
def small_fs(tmp_path):
    """A 256 KiB tmpfs (needs root; CI provides it)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if os.geteuid() != 0:
        need("mounting a small tmpfs needs root")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)
