"""The command line and the library's silence on stdout."""

from __future__ import annotations

import subprocess
import sys

import netimpl


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "netimpl", *args], capture_output=True, text=True, timeout=120)


def test_info_lists_every_backend_and_the_kernel_features():
    out = run("info")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:4] == ["backend", "priority", "available", "default"]
    for info in netimpl.impls():
        row = next(line for line in lines if line.startswith(info.name + " "))
        assert ("yes" if info.available else "no") in row.split()
    assert any(line.strip().startswith("SO_ZEROCOPY") for line in lines)
    assert any(line.strip().startswith("io_uring") for line in lines)
    default_row = next(line for line in lines if line.startswith(netimpl.default_impl() + " "))
    assert "*" in default_row.split()


def test_demo_runs_a_small_transfer():
    out = run("demo", "--size", "16", "--runs", "1")
    assert out.returncode == 0, out.stderr
    assert "ratio netimpl/sendall" in out.stdout and "echo:" in out.stdout


def test_bad_command_line_is_an_error():
    assert run("nonsense").returncode == 2
    assert run("demo", "--size", "0").returncode == 2
    assert run("info", "extra").returncode == 2


def test_library_calls_print_nothing(capsys):
    with netimpl.listen("127.0.0.1", 0) as lsock, netimpl.connect("127.0.0.1", lsock.getaddr()[1]) as c:
        s = None
        while s is None:
            s = lsock.accept()
        with s:
            g = netimpl.SockGroup()
            g.add_sock(s, lambda grp, sock: sock.recv_into(bytearray(8)))
            c.writev_async(netimpl.Request([b"quiet"]))
            c.flush()
            g.poll(timeout=0.1)
            g.remove_sock(s)
            g.close()
    netimpl.impls()
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_info_into_a_closed_pipe_exits_quietly():
    out = subprocess.run(f"{sys.executable} -m netimpl info | head -1", shell=True, capture_output=True, text=True,
                         timeout=60)
    assert out.stdout.startswith("backend") and "Traceback" not in out.stderr
