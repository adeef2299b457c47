"""The conformance suite again, on uring with multishot receive and accept switched off.

Each uring feature falls back on its own; this runs the fallback paths (a
POLL_ADD per readiness event, recv(2), accept(2)) through every contract
test, as a kernel without them would, in a child process so that the
switch (``NETIMPL_URING_DISABLE``, read by the probe) starts clean.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from netimpl.uring import DISABLE_ENV

ROOT = Path(__file__).resolve().parents[2]


def test_the_conformance_suite_passes_on_the_fallback_paths():
    env = {**os.environ, DISABLE_ENV: "recv_multishot,accept_multishot"}
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-k", "uring",
         "tests/conformance", "tests/uring/test_multishot.py::test_a_reply_queued_by_a_read_callback_completes_before_poll_returns"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert " passed" in out.stdout and "skipped" not in out.stdout.splitlines()[-1], out.stdout[-500:]


def test_the_switch_is_what_the_probe_reports():
    code = "import netimpl; netimpl.impls(); print(netimpl.registry.get('uring').features['recv_multishot'])"
    env = {**os.environ, DISABLE_ENV: "recv_multishot"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.stdout.startswith("switched off"), out.stdout + out.stderr


def test_multishot_receive_without_bundles_passes_its_round_trips():
    env = {**os.environ, DISABLE_ENV: "bundle"}
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                          "tests/uring/test_multishot.py"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
