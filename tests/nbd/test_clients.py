"""``python -m netimpl.nbd`` against the clients people use: nbdinfo, nbdcopy, qemu-img and fio.

Each test runs once per available backend. The client programs come from
Debian's libnbd-bin, qemu-utils and fio (``.ci/run`` installs them); a
missing one skips here and fails in CI.
"""

from __future__ import annotations

import hashlib
import json
import signal
import tempfile

import pytest

from .conftest import run_tool, tool

MiB = 1 << 20


def sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(MiB), b""):
            h.update(chunk)
    return h.hexdigest()


def test_nbdinfo_shows_the_exports_sizes_and_flags(nbd_process, tmp_path):
    nbdinfo = tool("nbdinfo", "libnbd-bin")
    disk = tmp_path / "disk.img"
    with open(disk, "wb") as f:
        f.truncate(3 * MiB)
    srv = nbd_process("--size", "64M", "--export", f"disk={disk}")
    info = json.loads(run_tool(nbdinfo, "--json", srv.uri).stdout)
    (export,) = info["exports"]
    assert export["export-size"] == 64 * MiB
    assert info["protocol"] == "newstyle-fixed" and export["is_read_only"] is False
    for flag in ("can_flush", "can_fua", "can_trim", "can_zero", "can_multi_conn", "can_df"):
        assert export[flag] is True, flag
    assert export["block_size_maximum"] == 32 * MiB

    listed = json.loads(run_tool(nbdinfo, "--list", "--json", srv.uri).stdout)
    sizes = {e["export-name"]: e["export-size"] for e in listed["exports"]}
    assert sizes == {"": 64 * MiB, "disk": 3 * MiB}
    text = run_tool(nbdinfo, "--list", srv.uri).stdout
    assert 'export="disk"' in text and str(disk) in text


@pytest.mark.parametrize("connections", [1, 4])
def test_nbdcopy_writes_256_mib_and_reads_back_the_same(nbd_process, random_image, tmp_path, connections):
    nbdcopy = tool("nbdcopy", "libnbd-bin")
    srv = nbd_process("--size", "256M")
    run_tool(nbdcopy, f"--connections={connections}", str(random_image), srv.uri)
    back = tmp_path / "back.img"
    run_tool(nbdcopy, f"--connections={connections}", srv.uri, str(back))
    assert sha256(back) == sha256(random_image)
    out, _ = srv.stop()
    requests = int(out.rsplit(", ", 1)[1].split()[0])
    assert requests >= 2 * 256 * MiB // (32 * MiB)          # every byte went through the server


def test_nbdcopy_into_a_read_only_export_is_refused(nbd_process, tmp_path):
    nbdcopy = tool("nbdcopy", "libnbd-bin")
    nbdinfo = tool("nbdinfo", "libnbd-bin")
    srv = nbd_process("--size", "16M", "--read-only")
    assert json.loads(run_tool(nbdinfo, "--json", srv.uri).stdout)["exports"][0]["is_read_only"] is True
    src = tmp_path / "src.img"
    src.write_bytes(b"x" * MiB)
    import subprocess

    out = subprocess.run([nbdcopy, str(src), srv.uri], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "read" in out.stderr.lower()


def test_qemu_img_convert_in_and_out_then_compare(nbd_process, random_image, tmp_path):
    qemu_img = tool("qemu-img", "qemu-utils")
    srv = nbd_process("--size", "256M")
    run_tool(qemu_img, "convert", "-n", "-f", "raw", "-O", "raw", str(random_image), srv.uri)
    back = tmp_path / "back.qcow2"
    run_tool(qemu_img, "convert", "-f", "raw", "-O", "qcow2", srv.uri, str(back))
    run_tool(qemu_img, "compare", "-f", "raw", "-F", "qcow2", str(random_image), str(back))
    run_tool(qemu_img, "compare", "-f", "raw", "-F", "raw", str(random_image), srv.uri)


def _fio(srv, *job: str) -> dict:
    fio = tool("fio", "fio")
    with tempfile.TemporaryDirectory() as aux:  # fio's state files (verify state) go here, not into the cwd
        out = run_tool(fio, "--output-format=json", f"--aux-path={aux}", "--name=job", "--ioengine=nbd",
                       f"--uri={srv.uri}", *job)
    (result,) = json.loads(out.stdout[out.stdout.index("{"):])["jobs"]
    assert result["error"] == 0, result
    return result


def test_fio_randwrite_with_crc32c_verify(nbd_process):
    srv = nbd_process("--size", "64M")
    r = _fio(srv, "--rw=randwrite", "--bs=4k", "--size=32M", "--iodepth=32", "--verify=crc32c",
             "--do_verify=1", "--verify_fatal=1")
    assert r["write"]["io_bytes"] == 32 * MiB and r["read"]["io_bytes"] == 32 * MiB   # every block verified


def test_fio_trim_job(nbd_process):
    srv = nbd_process("--size", "64M")
    r = _fio(srv, "--rw=randtrim", "--bs=64k", "--size=32M", "--iodepth=8")
    assert r["trim"]["total_ios"] == 32 * MiB // (64 << 10)


def test_fio_fsync_job(nbd_process, tmp_path):
    disk = tmp_path / "disk.img"
    with open(disk, "wb") as f:
        f.truncate(32 * MiB)
    srv = nbd_process("--size", "0", "--export", f"={disk}")
    r = _fio(srv, "--rw=randwrite", "--bs=4k", "--size=8M", "--iodepth=4", "--fsync=16")
    assert r["sync"]["total_ios"] >= 8 * MiB // 4096 // 16


@pytest.mark.parametrize("direct", [False, True], ids=["page-cache", "O_DIRECT"])
def test_nbdcopy_through_a_file_export(nbd_process, random_image, tmp_path, direct):
    nbdcopy = tool("nbdcopy", "libnbd-bin")
    disk = tmp_path / "disk.img"
    with open(disk, "wb") as f:
        f.truncate(256 * MiB)
    srv = nbd_process("--size", "0", "--export", f"disk={disk}", *(["--direct"] if direct else []))
    run_tool(nbdcopy, "--connections=2", str(random_image), srv.uri + "/disk")
    back = tmp_path / "back.img"
    run_tool(nbdcopy, srv.uri + "/disk", str(back))
    srv.stop()                                    # flushes the file
    assert sha256(disk) == sha256(random_image) == sha256(back)


def test_sigint_stops_the_server_cleanly(nbd_process):
    nbdinfo = tool("nbdinfo", "libnbd-bin")
    srv = nbd_process("--size", "16M")
    run_tool(nbdinfo, srv.uri)
    out, err = srv.stop(signal.SIGINT)
    assert "SIGINT: stopped after 1 connections" in out
