"""``python -m netimpl.nbd``'s command line: bad input is refused with a message naming it."""

from __future__ import annotations

import subprocess
import sys

import pytest


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "netimpl.nbd", "--host", "127.0.0.1", "--port", "0", *args],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("args,named", [
    (["--size", "1.5G"], "'1.5G'"),
    (["--size", "lots"], "'lots'"),
    (["--export", "noequals"], "'noequals'"),
    (["--export", "disk=/nonexistent/disk.img"], "/nonexistent/disk.img"),
    (["--size", "0", "--export", "=/dev/null"], "/dev/null"),
    (["--size", "0"], "nothing to export"),
    (["--impl", "nope"], "nope"),
    (["--port", "70000"], "70000"),
])
def test_bad_arguments_exit_2_naming_the_value(args, named):
    out = run(*args)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert named in out.stderr
    assert "Traceback" not in out.stderr


def test_the_same_export_name_twice_is_refused(tmp_path):
    disk = tmp_path / "d.img"
    disk.write_bytes(bytes(4096))
    out = run("--export", f"a={disk}", "--export", f"a={disk}")
    assert out.returncode == 2 and "'a' is given twice" in out.stderr


@pytest.mark.parametrize("value", ["-1", "soon", "inf"])
def test_a_bad_handshake_timeout_exits_2_naming_it(value):
    out = run("--handshake-timeout", value)
    assert out.returncode == 2 and repr(value) in out.stderr, out.stderr


def test_help_documents_the_handshake_timeout_and_its_default():
    out = subprocess.run([sys.executable, "-m", "netimpl.nbd", "--help"], capture_output=True, text=True, timeout=60)
    assert "--handshake-timeout SECONDS" in out.stdout and "default 10" in out.stdout
