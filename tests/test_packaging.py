"""What the distributions hold: the sdist everything to build, test and read; the wheel only what runs.

Builds both once with ``python -m build`` (the ``build`` package, in the test
extra) into a temporary directory, in an isolated environment as pip would.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from tests.conftest import need

ROOT = Path(__file__).resolve().parent.parent
BUILD_ONLY = ("netimpl/uring/build_ring.py", "netimpl/bench/build_loadgen.py")
NEVER = (".so", ".pyc", ".o", ".state")


@pytest.fixture(scope="module")
def dists(tmp_path_factory):
    need("" if importlib.util.find_spec("build.__main__") else "the build package is not installed (pip install build)")
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)], check=False,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (sdist,) = out.glob("*.tar.gz")
    (wheel,) = out.glob("*.whl")
    with tarfile.open(sdist) as tar:
        sdist_files = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    with zipfile.ZipFile(wheel) as whl:
        wheel_files = set(whl.namelist())
        metadata = next(whl.read(n).decode() for n in wheel_files if n.endswith(".dist-info/METADATA"))
    return sdist_files, wheel_files, metadata, done.stdout + done.stderr


def tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, check=False, capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip("not a git checkout: no list of the project's files to compare with")
    return [f for f in out.stdout.splitlines() if (ROOT / f).exists()]


def test_the_sdist_holds_every_file_of_the_project(dists):
    sdist_files, _, _, _ = dists
    missing = [f for f in tracked_files() if f not in sdist_files and f != ".gitignore"]
    assert not missing, f"not in the sdist: {missing}"
    for must in ("LICENSE", "CHANGELOG.md", "README.md", "docs/api.md", "tests/__init__.py", "tests/conftest.py",
                 *BUILD_ONLY, "netimpl/uring/ring.c", "netimpl/uring/ring.cdef"):
        assert must in sdist_files, must


def test_the_sdist_holds_nothing_built(dists):
    sdist_files, _, _, _ = dists
    built = [f for f in sdist_files if f.endswith(NEVER) or "__pycache__" in f or f.startswith("build/")
             or f in ("netimpl/uring/_ring.c", "netimpl/bench/_loadgen.c")]
    assert not built, built


def test_the_wheel_holds_what_runs_and_the_license(dists):
    _, wheel_files, metadata, _ = dists
    assert "netimpl/__init__.py" in wheel_files and "netimpl/nbd/server.py" in wheel_files
    build_only = [f for f in wheel_files if f in BUILD_ONLY or f.endswith((".c", ".cdef", ".h"))
                  or f.startswith(("tests/", "docs/", "benchmarks/"))]
    assert not build_only, build_only
    assert any(f.endswith(".dist-info/licenses/LICENSE") for f in wheel_files)
    assert "License-Expression: BSD-3-Clause" in metadata
    assert "# netimpl" in metadata  # the README is the package description


def test_the_build_raises_no_license_deprecation(dists):
    *_, log = dists
    assert "License classifiers are deprecated" not in log and "project.license` as a TOML table" not in log


def test_the_license_is_the_bsd_3_clause_text():
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("BSD 3-Clause License") and "Neither the name of the copyright holder" in text
