"""Sparse exports judged by clients no one here wrote, with nbdkit beside the server as a reference.

``nbdinfo --map`` and ``qemu-img map`` must see holes and data where they
are, nbdsh (python3-libnbd) the flags and REQ_ONE, nbdcopy must copy a
sparse 1 GiB image by its data alone and keep the copy sparse, and qemu-io
pattern writes and reads at odd offsets must read back. Each test runs on
every backend and against ``nbdkit`` (memory or file plugin, on a Unix
socket) with the same assertions, so a disagreement shows which side is
wrong. The programs come from Debian's libnbd-bin, python3-libnbd,
qemu-utils and nbdkit (``.ci/run`` installs them).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest

from tests.conftest import available_impls, need

from .conftest import ProcessServer, run_tool, tool

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30


class NbdkitServer:
    """``nbdkit memory SIZE`` or ``nbdkit file PATH`` on a Unix socket: the reference server."""

    def __init__(self, sock, plugin_args):
        self.sock = sock
        self.proc = subprocess.Popen([tool("nbdkit", "nbdkit"), "--exit-with-parent", "-f", "-U", str(sock),
                                      *plugin_args], stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 10
        while not os.path.exists(sock):
            assert self.proc.poll() is None and time.monotonic() < deadline, self.proc.stderr.read()
            time.sleep(0.02)
        self.uri = f"nbd+unix:///?socket={sock}"
        self.stopped = False

    def stop(self):
        if not self.stopped:
            self.stopped = True
            self.proc.terminate()
            self.proc.communicate(timeout=30)


class NetimplServer(ProcessServer):
    """``python -m netimpl.nbd``; once stopped, ``requests`` is how many it served."""

    stopped = False
    requests = -1

    def stop(self, *args):
        if not self.stopped:
            self.stopped = True
            out, _ = super().stop(*args)
            self.requests = int(re.search(r"stopped after \d+ connections, (\d+) requests", out).group(1))


@pytest.fixture(params=[*available_impls(), "nbdkit"])
def serve(request, tmp_path):
    """``serve(size=..., path=...)`` → a running server of a memory export of ``size`` or of the file ``path``."""
    running = []

    def start(size: int | None = None, path=None):
        if request.param == "nbdkit":
            srv = NbdkitServer(tmp_path / f"nbdkit{len(running)}.sock",
                               ["memory", str(size)] if path is None else ["file", str(path)])
        else:
            srv = NetimplServer("--impl", request.param, "--size", str(size or 0),
                                *([] if path is None else ["--export", f"={path}"]))
        running.append(srv)
        return srv

    yield start
    for srv in running:
        srv.stop()


def nbdinfo_map(uri) -> list[tuple[int, int, bool, bool]]:
    """``(offset, length, hole, zero)`` per extent, from ``nbdinfo --map --json``."""
    out = json.loads(run_tool(tool("nbdinfo", "libnbd-bin"), "--map", "--json", uri).stdout)
    return [(e["offset"], e["length"], bool(e["type"] & 1), bool(e["type"] & 2)) for e in out]


def qemu_img_map(uri) -> list[tuple[int, int, bool, bool]]:
    """The same from ``qemu-img map --output=json`` (its ``data: false`` is the hole)."""
    out = json.loads(run_tool(tool("qemu-img", "qemu-utils"), "map", "--output=json", "-f", "raw", uri).stdout)
    return [(e["start"], e["length"], not e["data"], e["zero"]) for e in out]


def check_map(extents, size, data, holes):
    """The extents tile the export; every range in ``data`` is data, every range in ``holes`` a zero hole.

    The ranges are chosen 64 KiB apart from each other, so that any server's
    allocation granularity up to that (ours 4 KiB, nbdkit memory's 32 KiB,
    a file system's block) gives the same verdict.
    """
    pos = 0
    for offset, length, _, _ in extents:
        assert offset == pos and length > 0, extents
        pos += length
    assert pos == size, extents

    def covering(start, end):
        return [e for e in extents if e[0] < end and e[0] + e[1] > start]

    for start, end in data:
        assert all(not hole for _, _, hole, _ in covering(start, end)), (start, end, covering(start, end))
    for start, end in holes:
        assert all(hole and zero for _, _, hole, zero in covering(start, end)), (start, end, covering(start, end))


def qemu_io(uri, *commands: str) -> str:
    argv = [tool("qemu-io", "qemu-utils"), "-f", "raw", uri]
    for c in commands:
        argv += ["-c", c]
    out = run_tool(*argv).stdout
    assert "fail" not in out.lower() and "error" not in out.lower(), out
    return out


# -- maps ------------------------------------------------------------------------------------------

def test_the_map_of_a_memory_export_after_writes_zeroes_and_discards(serve):
    srv = serve(size=16 * MiB)
    qemu_io(srv.uri, "write -P 0xab 12345 6789", "write -P 0xcd 1M 64k", "write -P 0xef 8M 1M",
            "discard 8448k 256k", "write -z -u 12M 512k")           # -u: WRITE_ZEROES that may punch
    data = [(12345, 12345 + 6789), (MiB, MiB + 64 * KiB), (8 * MiB, 8 * MiB + 256 * KiB),
            (8 * MiB + 512 * KiB, 9 * MiB)]
    holes = [(96 * KiB, MiB - 64 * KiB), (MiB + 128 * KiB, 8 * MiB - 64 * KiB),
             (8 * MiB + 256 * KiB, 8 * MiB + 512 * KiB), (9 * MiB + 64 * KiB, 16 * MiB)]
    for extents in (nbdinfo_map(srv.uri), qemu_img_map(srv.uri)):
        check_map(extents, 16 * MiB, data, holes)


def test_the_map_of_a_sparse_file_export(serve, tmp_path):
    path = tmp_path / "sparse.img"
    with open(path, "wb") as f:
        f.truncate(64 * MiB)
        for offset, length in ((MiB, 4 * KiB), (10 * MiB, 3 * MiB), (63 * MiB, MiB)):
            f.seek(offset)
            f.write(os.urandom(length))
    srv = serve(path=path)
    data = [(MiB, MiB + 4 * KiB), (10 * MiB, 13 * MiB), (63 * MiB, 64 * MiB)]
    holes = [(0, MiB - 64 * KiB), (MiB + 64 * KiB, 10 * MiB - 64 * KiB), (13 * MiB + 64 * KiB, 63 * MiB - 64 * KiB)]
    for extents in (nbdinfo_map(srv.uri), qemu_img_map(srv.uri)):
        check_map(extents, 64 * MiB, data, holes)
    qemu_io(srv.uri, "discard 10M 1M", "write -P 1 30M 4k")
    data = [(11 * MiB, 13 * MiB), (30 * MiB, 30 * MiB + 4 * KiB)]
    holes = [(10 * MiB, 11 * MiB - 64 * KiB), (13 * MiB + 64 * KiB, 30 * MiB - 64 * KiB)]
    check_map(nbdinfo_map(srv.uri), 64 * MiB, data, holes)


# -- nbdsh: flags, REQ_ONE, fast zero ------------------------------------------------------------

NBDSH_SCRIPT = r"""
import json
h.pwrite(b"x" * 5000, 3 * 1024 * 1024 + 7)
seen = []
def extents(metacontext, offset, entries, err):
    seen.append((metacontext, list(entries)))
h.block_status(100000, 0, extents, nbd.CMD_FLAG_REQ_ONE)
h.block_status(3 * 1024 * 1024, 5000, extents, 0)
if h.can_cache():
    h.cache(1024 * 1024, 12345)
try:
    h.zero(65536, 0, nbd.CMD_FLAG_FAST_ZERO)
    fast_zero = 0
except nbd.Error as e:
    fast_zero = e.errnum
print(json.dumps({
    "flags": {name: getattr(h, "can_" + name)() for name in
              ("cache", "fast_zero", "flush", "fua", "trim", "zero", "df", "multi_conn")},
    "base:allocation": h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION),
    "block_size": [h.get_block_size(w) for w in (nbd.SIZE_MINIMUM, nbd.SIZE_PREFERRED, nbd.SIZE_MAXIMUM)],
    "extents": seen, "fast_zero_errno": fast_zero}))
"""


def _nbdsh() -> list[str]:
    """nbdsh (``python3 -m nbd``), run by an interpreter that has libnbd's module: Debian's python3,
    which need not be the first python3 on the PATH."""
    tool("nbdsh", "python3-libnbd")
    for python in dict.fromkeys((sys.executable, "/usr/bin/python3")):
        if subprocess.run([python, "-c", "import nbd"], capture_output=True, check=False).returncode == 0:
            return [python, "-m", "nbd"]
    need("no interpreter here imports nbd (Debian package python3-libnbd)")
    raise AssertionError("unreachable")


def test_nbdsh_sees_the_flags_one_extent_for_req_one_and_extents_within_the_request(serve):
    nbdsh = _nbdsh()
    srv = serve(size=16 * MiB)
    out = run_tool(*nbdsh, "--base-allocation", "-u", srv.uri, "-c", NBDSH_SCRIPT).stdout
    got = json.loads(out.strip().splitlines()[-1])
    assert got["base:allocation"] is True
    (ctx1, req_one), (ctx2, many) = got["extents"]
    assert ctx1 == ctx2 == "base:allocation"
    assert len(req_one) == 2 and req_one[0] <= 100000 and req_one[1] == 3     # one hole, within the length
    lengths = many[0::2]
    assert sum(lengths[:-1]) < 3 * MiB and sum(lengths) <= 3 * MiB + 5000 + 64 * KiB
    assert 0 in many[1::2] and many[1] == 3                   # the data at 3 MiB + 7 follows a hole
    if isinstance(srv, NetimplServer):                         # what this server promises exactly
        assert got["flags"] == dict.fromkeys(got["flags"], True)
        assert got["block_size"] == [1, 4096, 32 * MiB]
        assert req_one[0] == 100000 and sum(lengths) == 3 * MiB     # the last extent cut at offset + length
        assert got["fast_zero_errno"] == 0                     # memory zeroes fast


# -- nbdcopy of a sparse 1 GiB image ---------------------------------------------------------------

def _sparse_gib(path):
    with open(path, "wb") as f:
        f.truncate(GiB)
        for i in range(10):                                   # 10 MiB of data in 10 pieces
            f.seek(i * 100 * MiB + 3 * MiB + 4 * KiB * i)
            f.write(os.urandom(MiB))


def _shmem(pid: int) -> int:
    """Bytes of shared memory (the memory export's pages) a process has mapped in."""
    with open(f"/proc/{pid}/status") as f:
        (kib,) = [int(line.split()[1]) for line in f if line.startswith("RssShmem:")]
    return kib * KiB


def _same(a, b):
    subprocess.run(["cmp", str(a), str(b)], check=True, capture_output=True)


def test_nbdcopy_copies_a_sparse_gib_by_its_data_and_keeps_it_sparse(serve, tmp_path):
    """Twice, each time into a fresh 1 GiB memory export and out again: once by the extents, once
    reading everything (``--no-extents``); the times are printed, not judged."""
    nbdcopy = tool("nbdcopy", "libnbd-bin")
    src = tmp_path / "src.img"
    _sparse_gib(src)
    requests = {}
    for how, args in (("sparse", []), ("full", ["--no-extents"])):
        srv = serve(size=GiB)
        run_tool(nbdcopy, str(src), srv.uri)
        check_map(nbdinfo_map(srv.uri), GiB, [(3 * MiB, 4 * MiB)], [(0, 3 * MiB - 64 * KiB), (5 * MiB, 100 * MiB)])
        dst = tmp_path / f"{how}.img"
        t = time.perf_counter()
        run_tool(nbdcopy, *args, srv.uri, str(dst))
        took = time.perf_counter() - t
        if isinstance(srv, NetimplServer):        # reading the holes allocated none of them
            assert _shmem(srv.proc.pid) < 64 * MiB
        srv.stop()
        _same(src, dst)
        allocated = os.stat(dst).st_blocks * 512
        print(f"nbdcopy out of {type(srv).__name__}, {how}: {took:.3f} s, {allocated / MiB:.2f} MiB allocated, "
              f"{getattr(srv, 'requests', '?')} requests served")
        assert allocated <= 11 * MiB, allocated                  # the copy stays sparse
        requests[how] = getattr(srv, "requests", None)
    if requests["sparse"] is not None:
        # the same copy in both times; out, the sparse copy asked for its 10 MiB and a few block statuses,
        # the full one read the whole GiB (4096 of nbdcopy's 256 KiB requests)
        assert requests["sparse"] < 1000 and requests["full"] - requests["sparse"] > 3000, requests


def test_qemu_img_convert_in_and_out_keeps_a_sparse_image_sparse(serve, tmp_path):
    """qemu-img zeroes the target first (a FAST_ZERO request where offered), then writes the data alone;
    out again, it reads the data by the extents and writes a sparse file."""
    qemu_img = tool("qemu-img", "qemu-utils")
    src = tmp_path / "src.img"
    with open(src, "wb") as f:
        f.truncate(256 * MiB)
        for i in range(4):
            f.seek(i * 64 * MiB + 5 * MiB)
            f.write(os.urandom(MiB))
    srv = serve(size=256 * MiB)
    run_tool(qemu_img, "convert", "-n", "-f", "raw", "-O", "raw", str(src), srv.uri)
    check_map(qemu_img_map(srv.uri), 256 * MiB, [(i * 64 * MiB + 5 * MiB, i * 64 * MiB + 6 * MiB) for i in range(4)],
              [(0, 5 * MiB - 64 * KiB), (6 * MiB + 64 * KiB, 69 * MiB - 64 * KiB)])
    dst = tmp_path / "dst.img"
    run_tool(qemu_img, "convert", "-f", "raw", "-O", "raw", srv.uri, str(dst))
    _same(src, dst)
    assert os.stat(dst).st_blocks * 512 <= 5 * MiB, os.stat(dst).st_blocks


# -- qemu-io patterns at odd offsets -------------------------------------------------------------

@pytest.mark.parametrize("backing", ["memory", "file"])
def test_qemu_io_patterns_at_odd_offsets_and_lengths_read_back(serve, tmp_path, backing):
    path = tmp_path / "disk.img"
    with open(path, "wb") as f:
        f.truncate(8 * MiB)
    srv = serve(size=8 * MiB) if backing == "memory" else serve(path=path)
    out = qemu_io(srv.uri,
                  "write -P 0xab 12345 6789", "write -P 0x5a 1048573 70001", "write -P 0x11 4095 2",
                  "write -z 2000001 4099", "write -P 0x77 7340031 1048577", "discard 1060000 5000",
                  "read -P 0xab 12345 6789", "read -P 0x5a 1048573 11427", "read -P 0 1060000 5000",
                  "read -P 0x5a 1065000 53574", "read -P 0x11 4095 2", "read -P 0 0 4095",
                  "read -P 0 2000001 4099", "read -P 0x77 7340031 1048577", "read -P 0 19134 1029439")
    assert out.count("read ") == 9 and "discard 5000/5000" in out, out
