"""The command line and the library's silence on stdout."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import netimpl
from netimpl import features
from netimpl.__main__ import COMMANDS
from netimpl import accel


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "netimpl", *args], check=False, capture_output=True, text=True, timeout=120)


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
    core = next(line for line in lines if line.startswith("core: "))
    assert core.startswith("core: compiled") == (accel.native is not None), core
    from netimpl.uring import group as ugroup
    assert ("uring group loop: compiled" in core) == ugroup._compiled, core


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
    out = subprocess.run(f"{sys.executable} -m netimpl info | head -1", shell=True, check=False, capture_output=True, text=True,
                         timeout=60)
    assert out.stdout.startswith("backend") and "Traceback" not in out.stderr


def run_hiding(modules: list[str], *args: str, argv0: str = "-c") -> subprocess.CompletedProcess:
    """The command line as if ``modules`` (the compiled parts) were not built."""
    code = (f"import sys; sys.argv[0] = {argv0!r}\n"
            f"for m in {modules!r}: sys.modules[m] = None\n"
            "from netimpl.__main__ import main; sys.exit(main())")
    return subprocess.run([sys.executable, "-c", code, *args], check=False, capture_output=True, text=True, timeout=120)


def one_line_failure(out: subprocess.CompletedProcess, status: int, *words: str) -> str:
    assert out.returncode == status, (out.returncode, out.stdout, out.stderr)
    assert "Traceback" not in out.stderr and out.stdout == ""
    lines = out.stderr.splitlines()
    assert len(lines) == 1, out.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


@pytest.mark.parametrize("command, option", [("bench", "--quick"), ("demo", "--size"), ("info", "usage:")])
def test_each_command_has_its_own_help(command, option):
    out = run(command, "--help")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"usage: python -m netimpl {command}") and option in out.stdout
    top = run("--help")
    assert top.returncode == 0 and "COMMAND --help" in top.stdout and all(c in top.stdout for c in COMMANDS)


@pytest.mark.parametrize("args", [["info"], ["demo", "--size", "1", "--runs", "1"]])
def test_an_unknown_backend_in_the_environment_is_one_line(args):
    out = subprocess.run([sys.executable, "-m", "netimpl", *args], check=False, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "NETIMPL_IMPL": "bogus"})
    one_line_failure(out, 2, f"python -m netimpl {args[0]}: NETIMPL_IMPL=bogus: unknown backend 'bogus'", "posix")


@pytest.mark.parametrize("command", ["demo", "bench"])
def test_an_unknown_backend_option_is_one_line(command):
    one_line_failure(run(command, "--impl", "bogus"), 2, f"python -m netimpl {command}:", "unknown backend 'bogus'",
                     "registered: ")


def test_without_the_load_generator_bench_says_what_to_install():
    out = run_hiding(["netimpl.bench._loadgen"], "bench", "--quick")
    line = one_line_failure(out, 1, "the C load generator is not built", features.INSTALL_HINT)
    assert line.startswith("python -m netimpl bench: ")


def test_without_the_ring_every_command_that_needs_it_gives_the_same_sentence():
    out = run_hiding(["netimpl.uring._ring"], "demo", "--impl", "uring", "--size", "1", "--runs", "1")
    one_line_failure(out, 1, "backend 'uring' is unavailable", "the io_uring C core is not built",
                     features.INSTALL_HINT)
    listed = run_hiding(["netimpl.uring._ring"], "info")
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if line.startswith("uring "))
    assert "the io_uring C core is not built" in row and features.INSTALL_HINT in row


def test_the_console_script_names_itself_and_survives_a_closed_pipe():
    script = ("import sys; sys.argv[0] = '/usr/local/bin/netimpl'\n"
              "from netimpl.__main__ import main; sys.exit(main())")
    out = subprocess.run([sys.executable, "-c", script, "--help"], check=False, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.startswith("usage: netimpl "), out.stdout
    sub = subprocess.run([sys.executable, "-c", script, "bench", "--help"], check=False, capture_output=True, text=True,
                         timeout=60)
    assert sub.stdout.startswith("usage: netimpl bench "), sub.stdout
    piped = subprocess.run(f"{sys.executable} -c \"{script}\" info | head -1", shell=True, check=False, capture_output=True,
                           text=True, timeout=60)
    assert piped.stdout.startswith("backend") and piped.stderr == "", piped.stderr


PROFILE = Path(__file__).resolve().parent.parent / "benchmarks" / "profile_server.py"


def test_profile_server_help_and_bad_names_run_nothing():
    env = {**os.environ, "PYTHONPATH": str(PROFILE.parent.parent)}  # this tree's netimpl, installed or not

    def prof(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(PROFILE), *args], check=False, capture_output=True, text=True, timeout=60,
                              env=env)

    out = prof("--help")
    assert out.returncode == 0 and "blocking" in out.stdout and "read-16x32" in out.stdout, out.stderr
    bad = prof("nonsense")
    assert bad.returncode == 2 and "unknown contender 'nonsense'" in bad.stderr and "blocking" in bad.stderr
    assert prof("asyncio", "nonsense").returncode == 2
    assert prof("asyncio", "read-qd1", "0").returncode == 2


def test_the_nbd_server_says_what_listening_beyond_loopback_exposes():
    from netimpl.nbd.__main__ import exposure_warning, parser

    for host in ("127.0.0.1", "::1", "[::1]", "localhost", "127.0.0.2"):
        assert exposure_warning(host, read_only=False) == "", host
    everywhere = exposure_warning("0.0.0.0", read_only=False)
    assert "every interface" in everywhere and "overwrite" in everywhere and "--host 127.0.0.1" in everywhere
    assert "overwrite" not in exposure_warning("192.0.2.1", read_only=True)
    assert "192.0.2.1" in exposure_warning("192.0.2.1", read_only=True)
    assert "no authentication" in parser().format_help() and parser().get_default("host") == "0.0.0.0"


def test_bench_refuses_an_output_it_could_not_write_before_running():
    out = run("bench", "--quick", "--json", "/nonexistent-dir/b.json")
    assert out.returncode == 2 and "/nonexistent-dir" in out.stderr and "contenders:" not in out.stdout


def test_an_interrupted_command_ends_without_a_traceback(capsys):
    from netimpl import _cli

    def interrupted() -> int:
        raise KeyboardInterrupt

    assert _cli.run(interrupted, "netimpl bench") == 130
    assert capsys.readouterr().err.strip() == "netimpl bench: interrupted"


def test_profile_server_profiles_every_thread_of_the_blocking_server():
    import importlib.util
    import pstats
    import threading

    spec = importlib.util.spec_from_file_location("profile_server", PROFILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def connection_work() -> int:
        return sum(range(1000))

    finished: list = []
    started: list = []
    undo = module.profile_threads(finished, started)
    try:
        threads = [threading.Thread(target=connection_work) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        undo()
    assert started == threads and len(finished) == 3
    stats = pstats.Stats(*finished)
    assert any(name == "connection_work" for (_, _, name) in stats.stats), "thread work missing from the profile"
    after = threading.Thread(target=connection_work)
    after.start()
    after.join()
    assert len(finished) == 3  # undone: later threads run unprofiled
