"""The NBD target on a Unix-domain socket (``--unix PATH``) and by socket activation (``nbdinfo -- [ ... ]``)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

from tests.nbd.conftest import run_tool, tool


def test_unix_socket_served_to_real_clients(impl, nbd_process, tmp_path, random_image):
    nbdinfo, nbdcopy = tool("nbdinfo", "libnbd-bin"), tool("nbdcopy", "libnbd-bin")
    path = tmp_path / "nbd.sock"
    srv = nbd_process("--unix", str(path), "--size", "256M")
    assert f"listening on unix:{path}" in srv.banner[0] and "zero-copy off" in srv.banner[0]
    uri = f"nbd+unix:///?socket={path}"
    info = json.loads(run_tool(nbdinfo, "--json", uri).stdout)
    assert info["exports"][0]["export-size"] == 256 << 20
    run_tool(nbdcopy, str(random_image), uri)          # 256 MiB in, then back out, compared
    back = tmp_path / "back.img"
    run_tool(nbdcopy, uri, str(back))
    assert back.read_bytes() == random_image.read_bytes()
    srv.stop()
    assert not path.exists(), "the socket file outlived the server"


def test_a_stale_socket_file_is_taken_over_and_a_live_one_refused(impl, nbd_process, tmp_path):
    path = tmp_path / "nbd.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()                                      # what a server killed with SIGKILL leaves
    srv = nbd_process("--unix", str(path), "--size", "16M")
    again = subprocess.run([sys.executable, "-m", "netimpl.nbd", "--impl", impl, "--unix", str(path)],
                           capture_output=True, text=True, timeout=30)
    assert again.returncode == 2 and f"cannot listen on unix:{path}" in again.stderr, again.stderr
    srv.stop()


def test_socket_activation_captive_mode(impl):
    nbdinfo = tool("nbdinfo", "libnbd-bin")
    env = {**os.environ, "NETIMPL_IMPL": impl}
    out = subprocess.run([nbdinfo, "--json", "--", "[", sys.executable, "-m", "netimpl.nbd", "--size", "32M", "]"],
                         capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)                      # stdout is nbdinfo's alone: the banner went to stderr
    assert info["exports"][0]["export-size"] == 32 << 20
    assert "listening on socket-activation fd 3" in out.stderr or "listening on unix:" in out.stderr


def test_workers_refuse_a_unix_socket(tmp_path):
    out = subprocess.run([sys.executable, "-m", "netimpl.nbd", "--workers", "2", "--unix", str(tmp_path / "s")],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "--workers needs a TCP port" in out.stderr
