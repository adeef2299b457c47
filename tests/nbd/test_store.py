"""Backing stores, on their own: sizes, reads, writes, zeroing, O_DIRECT read-modify-write, errors."""

from __future__ import annotations

import errno
import os
import weakref

import pytest

from netimpl.nbd import DirectFileStore, FileStore, MemoryStore, open_file_store, parse_size

MiB = 1 << 20


@pytest.mark.parametrize("text,want", [("4096", 4096), ("1k", 1024), ("1G", 1 << 30), ("512MiB", 512 << 20),
                                       (" 2 T ", 2 << 40), ("3mb", 3 << 20)])
def test_parse_size(text, want):
    assert parse_size(text) == want


@pytest.mark.parametrize("bad", ["", "G", "1.5G", "-1", "1X", "ten"])
def test_parse_size_names_a_bad_value(bad):
    with pytest.raises(ValueError, match=repr(bad).replace("(", r"\(").replace(".", r"\.")):
        parse_size(bad)


@pytest.mark.parametrize("bad,exc", [(0, ValueError), (-1, ValueError), ("1G", TypeError), (True, TypeError)])
def test_memory_store_refuses_a_bad_size(bad, exc):
    with pytest.raises(exc, match="size"):
        MemoryStore(bad)


def _stores(tmp_path, size=4 * MiB):
    path = tmp_path / "disk.img"
    with open(path, "wb") as f:
        f.truncate(size)
    return [MemoryStore(size), FileStore(str(path)), _direct(str(path))]


def _direct(path):
    try:
        return DirectFileStore(path)
    except OSError as exc:
        pytest.skip(f"O_DIRECT refused here: {exc}")


@pytest.mark.parametrize("kind", [0, 1, 2], ids=["memory", "file", "direct"])
def test_unaligned_writes_read_back_and_leave_their_neighbours(tmp_path, kind):
    store = _stores(tmp_path)[kind]
    try:
        base = os.urandom(64 << 10)
        store.write(0, memoryview(base), fua=False)
        for offset, length in ((1, 1), (4095, 2), (5000, 9000), (8192, 4096), (60000, 5536)):
            data = os.urandom(length)
            view, token = store.write_target(offset, length)
            view[:] = data
            store.commit(offset, length, token, fua=bool(offset & 1))
            base = base[:offset] + data + base[offset + length:]
            got, token = store.read(0, len(base))
            assert bytes(got) == base, (offset, length)
            store.release(token)
        store.flush()
    finally:
        store.close()
        store.close()          # idempotent


@pytest.mark.parametrize("kind", [0, 1, 2], ids=["memory", "file", "direct"])
@pytest.mark.parametrize("may_trim", [True, False])
def test_zero_and_trim(tmp_path, kind, may_trim):
    store = _stores(tmp_path)[kind]
    try:
        data = os.urandom(4 * MiB)
        store.write(0, memoryview(data), fua=False)
        store.zero(10, 3 * 4096 + 7, may_trim)
        store.trim(2 * MiB - 5, MiB)
        want = bytearray(data)
        want[10:10 + 3 * 4096 + 7] = bytes(3 * 4096 + 7)
        want[2 * MiB - 5:3 * MiB - 5] = bytes(MiB)
        got, token = store.read(0, 4 * MiB)
        assert bytes(got) == bytes(want)
        store.release(token)
    finally:
        store.close()


def test_a_file_store_flushes_to_the_file_and_trim_punches_a_hole(tmp_path):
    path = tmp_path / "disk.img"
    path.write_bytes(os.urandom(4 * MiB))
    store = FileStore(str(path))
    try:
        store.trim(0, 2 * MiB)
        store.write(3 * MiB, memoryview(b"hello"), fua=True)
        store.flush()
    finally:
        store.close()
    disk = path.read_bytes()
    assert disk[:2 * MiB] == bytes(2 * MiB) and disk[3 * MiB:3 * MiB + 5] == b"hello"
    assert os.stat(path).st_blocks * 512 <= 2 * MiB + 64 << 10


def test_a_read_only_file_store_opens_a_read_only_file(tmp_path):
    path = tmp_path / "ro.img"
    path.write_bytes(b"x" * 8192)
    os.chmod(path, 0o444)
    store = open_file_store(str(path), read_only=True)
    try:
        assert store.read_only and store.size == 8192
        got, _ = store.read(100, 3)
        assert bytes(got) == b"xxx"
        assert "read-only" in store.describe()
    finally:
        store.close()


def test_file_store_errors_name_the_file(tmp_path):
    with pytest.raises(OSError, match="missing.img") as e:
        FileStore(str(tmp_path / "missing.img"))
    assert e.value.errno == errno.ENOENT
    with pytest.raises(ValueError, match="neither a regular file nor a block device"):
        FileStore(os.devnull)
    odd = tmp_path / "odd.img"
    odd.write_bytes(b"x" * 5000)
    with pytest.raises(ValueError, match="multiple of 4096"):
        DirectFileStore(str(odd))


def test_a_full_disk_is_enospc_not_a_crash(small_fs):
    path = small_fs / "disk.img"
    with open(path, "wb") as f:
        f.truncate(4 * MiB)                       # sparse: bigger than the file system
    store = FileStore(str(path))
    try:
        with pytest.raises(OSError) as e:
            store.write(0, memoryview(os.urandom(MiB)), fua=False)
        assert e.value.errno == errno.ENOSPC
        got, token = store.read(3 * MiB, 4096)     # reading the hole still works
        assert bytes(got) == bytes(4096)
    finally:
        store.close()


def test_bounce_buffers_given_back_while_a_view_lives_are_fine(tmp_path):
    path = tmp_path / "disk.img"
    path.write_bytes(os.urandom(MiB))
    store = FileStore(str(path))
    try:
        lent = [store.read(i * 4096, 4096) for i in range(200)]   # more than the pool keeps
        for _view, token in lent:
            store.release(token)                                  # the view (a sent reply) lives on
        assert bytes(lent[-1][0]) == path.read_bytes()[199 * 4096:200 * 4096]
    finally:
        store.close()


def test_the_bounce_pool_keeps_a_bounded_number_of_bytes(tmp_path):
    path = tmp_path / "disk.img"
    path.write_bytes(bytes(MiB))
    store = FileStore(str(path))
    try:
        lent = [store.read(0, MiB) for _ in range(40)]
        bufs = [weakref.ref(token) for _, token in lent]
        for _view, token in lent:
            store.release(token)
        del lent, _view, token
        alive = sum(r() is not None for r in bufs)
        assert store._bounce.kept == alive * MiB <= store._bounce.KEEP_BYTES
    finally:
        store.close()


def test_memory_extents_agree_with_a_page_model_of_random_writes_trims_and_zeroes():
    """Every extent is a run of one state of a page model, and its flags are what reads back."""
    import random

    rng = random.Random(14)
    size = 1 * MiB + 1000                       # a partial last page too
    pages = -(-size // 4096)
    store = MemoryStore(size)
    model = [0] * pages                         # 0 hole, 1 data, 2 zeroes written without a hole
    try:
        assert len(store._state) == pages        # the map: a byte per page
        for _ in range(300):
            offset = rng.randrange(size)
            length = rng.randrange(1, min(size - offset, 40000) + 1)
            end = offset + length
            op = rng.choice(("write", "trim", "zero"))
            lo, hi = offset // 4096, -(-end // 4096)
            whole = range(-(-offset // 4096), end // 4096 if end < size else pages)
            if op == "write":
                store.write(offset, memoryview(os.urandom(length)), fua=False)
                model[lo:hi] = [1] * (hi - lo)
            elif op == "trim":
                store.trim(offset, length)
                for p in whole:
                    model[p] = 0
            else:
                store.zero(offset, length, may_trim=False)
                for p in range(lo, hi):
                    model[p] = 2 if p in whole or model[p] != 1 else 1
            q = rng.randrange(size)
            qlen = rng.randrange(1, size - q + 1)
            extents = store.extents(q, qlen, limit=1 << 14)
            assert all(n > 0 for n, _ in extents) and sum(n for n, _ in extents) == qlen
            pos = q
            for n, flags in extents:
                states = {model[p] for p in range(pos // 4096, -(-(pos + n) // 4096))}
                assert len(states) == 1, (pos, n, states)
                assert flags == {0: 3, 1: 0, 2: 2}[states.pop()]
                if flags & 2:
                    got, _ = store.read(pos, n)
                    assert bytes(got) == bytes(n), (pos, n)
                pos += n
            assert store.extents(q, qlen, limit=1) == extents[:1]
    finally:
        store.close()


def test_file_extents_and_their_fallback(tmp_path):
    path = tmp_path / "disk.img"
    with open(path, "wb") as f:
        f.truncate(4 * MiB)
        f.seek(MiB)
        f.write(os.urandom(4096))
    store = FileStore(str(path))
    try:
        assert store.extents(0, 4 * MiB, 10) == [(MiB, 3), (4096, 0), (3 * MiB - 4096, 3)]
        assert store.extents(MiB + 100, 10, 10) == [(10, 0)]
        assert store.extents(0, 4 * MiB, 1) == [(MiB, 3)]
        store._seek = lambda pos, whence: (_ for _ in ()).throw(OSError(errno.EOPNOTSUPP, "no"))
        assert store.extents(0, 4 * MiB, 10) == [(4 * MiB, 0)]
    finally:
        store.close()


def test_a_large_read_of_holes_is_sent_from_read_only_zeroes():
    store = MemoryStore(64 * MiB)
    try:
        store.write(MiB + 5, memoryview(b"x"), fua=False)
        assert store.zero_view(0, MiB) is not None and bytes(store.zero_view(0, MiB)) == bytes(MiB)
        assert store.zero_view(MiB, 64 << 10) is None            # a data page in it
        store.zero(2 * MiB, MiB, may_trim=False)                 # zeroes written: still zeroes to send
        assert len(store.zero_view(2 * MiB, 32 * MiB)) == 32 * MiB
        with pytest.raises(TypeError):
            store.zero_view(0, 4096)[0] = 1                      # read-only
    finally:
        store.close()
