"""base:allocation byte by byte: the meta context options, NBD_CMD_BLOCK_STATUS, CACHE and FAST_ZERO.

The raw client in client.py speaks from its own constants; every test runs
on each backend (the ``nbd`` fixture).
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import struct

import pytest

from netimpl.nbd import MemoryStore, open_file_store

from .client import (
    EINVAL,
    ENOTSUP,
    FLAG_FAST_ZERO,
    FLAG_NO_HOLE,
    FLAG_REQ_ONE,
    OPT,
    REP_ACK,
    REP_ERR_INVALID,
    REP_ERR_UNKNOWN,
    REP_INFO,
    REP_META_CONTEXT,
    STATE_HOLE,
    STATE_ZERO,
    TF,
    Client,
)

KiB, MiB = 1 << 10, 1 << 20
HOLE = STATE_HOLE | STATE_ZERO


def contexts(replies) -> list[tuple[int, str]]:
    """``(id, name)`` of each NBD_REP_META_CONTEXT, checking that an ACK ends them."""
    assert replies[-1][0] == REP_ACK, replies
    out = []
    for rtype, data in replies[:-1]:
        assert rtype == REP_META_CONTEXT, replies
        out.append((struct.unpack_from(">I", data)[0], data[4:].decode()))
    return out


def connect_with_allocation(c: Client, name: str = "") -> int:
    """Structured replies, SET_META_CONTEXT base:allocation, GO: the context id."""
    c.greeting()
    c.option(OPT["STRUCTURED_REPLY"])
    assert c.option_reply()[1] == REP_ACK
    c.structured = True
    ((ctx, got),) = contexts(c.meta_context("SET", name, ("base:allocation",)))
    assert got == "base:allocation"
    assert c.go(name)[-1][0] == REP_ACK
    return ctx


# -- negotiation -------------------------------------------------------------------------------------

def test_list_meta_context_answers_no_query_the_base_wildcard_and_the_name(nbd):
    srv = nbd()
    with Client(srv.port) as c:
        c.greeting()                                      # listing needs no structured replies
        assert contexts(c.meta_context("LIST")) == [(0, "base:allocation")]
        assert contexts(c.meta_context("LIST", "", ("base:",))) == [(0, "base:allocation")]
        assert contexts(c.meta_context("LIST", "", ("qemu:dirty-bitmap:b", "base:allocation"))) == [
            (0, "base:allocation")]
        assert contexts(c.meta_context("LIST", "", ("x-other:thing", "base:nothing"))) == []
        assert c.meta_context("LIST", "missing")[-1][0] == REP_ERR_UNKNOWN


def test_set_meta_context_needs_structured_replies_and_selects_by_name(nbd):
    srv = nbd()
    with Client(srv.port) as c:
        c.greeting()
        assert c.meta_context("SET", "", ("base:allocation",))[-1][0] == REP_ERR_INVALID
        c.option(OPT["STRUCTURED_REPLY"])
        assert c.option_reply()[1] == REP_ACK
        c.structured = True
        assert contexts(c.meta_context("SET", "", ("base:",))) == []          # "base:" selects nothing
        ((ctx, name),) = contexts(c.meta_context("SET", "", ("x-foo:bar", "base:allocation", "base:allocation")))
        assert name == "base:allocation" and ctx != 0
        assert c.go("")[-1][0] == REP_ACK
        assert c.block_status(0, 4096) == (0, ctx, [(4096, HOLE)])


@pytest.mark.parametrize("how", ["other export", "reset by an empty set", "reset by a malformed set"])
def test_block_status_is_refused_unless_the_context_holds_for_the_export_served(nbd, how):
    srv = nbd({"": MemoryStore(MiB), "b": MemoryStore(MiB)})
    with Client(srv.port) as c:
        c.greeting()
        c.option(OPT["STRUCTURED_REPLY"])
        assert c.option_reply()[1] == REP_ACK
        c.structured = True
        assert len(contexts(c.meta_context("SET", "b", ("base:allocation",)))) == 1
        name = "b"
        if how == "other export":
            name = ""
        elif how == "reset by an empty set":
            assert contexts(c.meta_context("SET", "b")) == []
        else:
            c.option(OPT["SET_META_CONTEXT"], struct.pack(">I", 1) + b"b" + struct.pack(">I", 2))
            assert c.option_reply()[1] == REP_ERR_INVALID
        assert c.go(name)[-1][0] == REP_ACK
        assert c.block_status(0, 4096)[0] == EINVAL
        assert c.read(0, 16) == bytes(16)                  # the connection goes on


@pytest.mark.parametrize("bad", [b"", b"\0\0\0\5ab", b"\0\0\0\0\0\0\0\1\0\0\0\xff", b"\0\0\0\0\0\0\0\0junk"])
def test_malformed_meta_context_requests_are_invalid(nbd, bad):
    srv = nbd()
    with Client(srv.port) as c:
        c.greeting()
        c.option(OPT["LIST_META_CONTEXT"], bad)
        assert c.option_reply()[1] == REP_ERR_INVALID
        assert c.go("")[-1][0] == REP_ACK


def test_the_transmission_flags_offer_cache_and_fast_zero(nbd):
    srv = nbd()
    with Client(srv.port) as c:
        _, flags = c.connect()
    assert flags & TF["SEND_CACHE"] and flags & TF["SEND_FAST_ZERO"]


# -- block status ---------------------------------------------------------------------------------

def test_memory_extents_follow_writes_trims_and_zeroes(nbd):
    srv = nbd({"": MemoryStore(4 * MiB)})
    with Client(srv.port) as c:
        ctx = connect_with_allocation(c)
        assert c.block_status(0, 4 * MiB) == (0, ctx, [(4 * MiB, HOLE)])
        assert c.write(12345, os.urandom(6789)) == 0               # pages 3-4 (12288..20480)
        assert c.write(MiB, os.urandom(256 * KiB)) == 0
        c.send_request("TRIM", MiB + 64 * KiB, 64 * KiB, handle=2)  # a hole inside the data
        assert c.reply()[:2] == (2, 0)
        c.send_request("WRITE_ZEROES", 2 * MiB, 128 * KiB, handle=3, flags=FLAG_NO_HOLE)   # allocated zeroes
        assert c.reply()[:2] == (3, 0)
        c.send_request("WRITE_ZEROES", MiB + 192 * KiB, 64 * KiB, handle=4)               # may punch
        assert c.reply()[:2] == (4, 0)
        want = [(12288, HOLE), (8192, 0), (MiB - 20480, HOLE), (64 * KiB, 0), (64 * KiB, HOLE), (64 * KiB, 0),
                (MiB - 192 * KiB, HOLE), (128 * KiB, STATE_ZERO), (2 * MiB - 128 * KiB, HOLE)]
        assert c.block_status(0, 4 * MiB) == (0, ctx, want)
        # a query that starts and ends inside pages: the first extent starts at the offset, the last
        # one is cut at offset + length, never extended past it
        assert c.block_status(13000, 8000)[2] == [(20480 - 13000, 0), (8000 - (20480 - 13000), HOLE)]
        assert c.block_status(13000, 100)[2] == [(100, 0)]
        # REQ_ONE: one extent, never longer than asked
        assert c.block_status(0, 100, FLAG_REQ_ONE)[2] == [(100, HOLE)]
        assert c.block_status(12288, MiB, FLAG_REQ_ONE)[2] == [(8192, 0)]
        assert c.block_status(2 * MiB + 4096, MiB, FLAG_REQ_ONE)[2] == [(124 * KiB, STATE_ZERO)]
        # what the extents say is what reads back
        assert c.read(MiB + 64 * KiB, 64 * KiB) == bytes(64 * KiB)
        assert c.read(2 * MiB, 128 * KiB) == bytes(128 * KiB)


def test_a_fragmented_map_is_answered_in_bounded_replies(nbd):
    srv = nbd({"": MemoryStore(256 * MiB)})
    with Client(srv.port) as c:
        connect_with_allocation(c)
        for page in range(0, 40000, 2):                     # 20000 data pages, a hole between each
            c.send_request("WRITE", page * 4096, 1, handle=page, data=b"x")
        for page in range(0, 40000, 2):
            assert c.reply()[:2] == (page, 0)
        err, _, extents = c.block_status(0, 256 * MiB)
        assert err == 0 and len(extents) == 1 << 14          # MAX_EXTENTS: the client asks again from there
        assert extents[:3] == [(4096, 0), (4096, HOLE), (4096, 0)]
        assert sum(n for n, _ in extents) == (1 << 14) * 4096


@pytest.mark.parametrize("offset,length,flags", [(4 * MiB - 4096, 8192, 0), (0, 0, 0), (4 * MiB, 1, 0),
                                                 (0, 4096, 1), (0, 4096, 1 << 4)],
                         ids=["past the end", "empty", "at the end", "FUA", "FAST_ZERO"])
def test_bad_block_status_requests_get_einval(nbd, offset, length, flags):
    srv = nbd({"": MemoryStore(4 * MiB)})
    with Client(srv.port) as c:
        connect_with_allocation(c)
        assert c.block_status(offset, length, flags)[0] == EINVAL
        assert c.block_status(0, 4096)[0] == 0


def _sparse_file(path, size, data_at):
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, length in data_at:
            f.seek(offset)
            f.write(os.urandom(length))


@pytest.mark.parametrize("direct", [False, True], ids=["page-cache", "O_DIRECT"])
def test_file_extents_are_the_files_holes_and_data(nbd, tmp_path, direct):
    path = tmp_path / "sparse.img"
    _sparse_file(path, 8 * MiB, [(MiB, MiB), (5 * MiB, 64 * KiB)])
    srv = nbd({"f": open_file_store(str(path), direct=direct)})
    with Client(srv.port) as c:
        ctx = connect_with_allocation(c, "f")
        assert c.block_status(0, 8 * MiB) == (0, ctx, [(MiB, HOLE), (MiB, 0), (3 * MiB, HOLE), (64 * KiB, 0),
                                                       (3 * MiB - 64 * KiB, HOLE)])
        assert c.block_status(MiB + 5, 10, FLAG_REQ_ONE)[2] == [(10, 0)]
        c.send_request("TRIM", MiB, 512 * KiB, handle=2)
        assert c.reply()[:2] == (2, 0)
        assert c.block_status(0, 2 * MiB)[2] == [(MiB + 512 * KiB, HOLE), (512 * KiB, 0)]


def test_a_file_system_without_seek_hole_reports_all_data(nbd, tmp_path, caplog):
    caplog.set_level(logging.INFO, "netimpl.nbd")
    path = tmp_path / "sparse.img"
    _sparse_file(path, 8 * MiB, [(MiB, MiB)])
    store = open_file_store(str(path))

    def refuse(pos, whence):
        raise OSError(errno.EINVAL, "no SEEK_DATA here")

    store._seek = refuse                                   # the seam: lseek as such a file system answers
    srv = nbd({"f": store})
    with Client(srv.port) as c:
        connect_with_allocation(c, "f")
        assert c.block_status(0, 8 * MiB)[1:] == (1, [(8 * MiB, 0)])
        assert c.block_status(0, 8 * MiB, FLAG_REQ_ONE)[2] == [(8 * MiB, 0)]
    assert "SEEK_DATA refused" in caplog.text


# -- CACHE, FAST_ZERO ------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["memory", "file"])
def test_cache_succeeds_and_refuses_flags_and_ranges_past_the_end(nbd, tmp_path, kind):
    path = tmp_path / "disk.img"
    _sparse_file(path, 4 * MiB, [(0, MiB)])
    srv = nbd({"": MemoryStore(4 * MiB) if kind == "memory" else open_file_store(str(path))})
    with Client(srv.port) as c:
        c.connect(structured=True)
        c.send_request("CACHE", 0, 2 * MiB, handle=1)
        assert c.reply()[:2] == (1, 0)
        c.send_request("CACHE", 0, 4096, handle=2, flags=1)
        assert c.reply()[:2] == (2, EINVAL)
        c.send_request("CACHE", 4 * MiB - 1, 2, handle=3)
        assert c.reply()[:2] == (3, EINVAL)


def test_fast_zero_on_memory_is_fast_either_way(nbd):
    srv = nbd({"": MemoryStore(4 * MiB)})
    with Client(srv.port) as c:
        connect_with_allocation(c)
        assert c.write(0, os.urandom(MiB)) == 0
        c.send_request("TRIM", 0, 4096, handle=9, flags=FLAG_FAST_ZERO)      # not a TRIM flag
        assert c.reply()[:2] == (9, EINVAL)
        for handle, flags in ((1, FLAG_FAST_ZERO), (2, FLAG_FAST_ZERO | FLAG_NO_HOLE)):
            c.send_request("WRITE_ZEROES", (handle - 1) * 512 * KiB + 7, 256 * KiB, handle=handle, flags=flags)
            assert c.reply()[:2] == (handle, 0)
        assert c.read(7, 256 * KiB) == bytes(256 * KiB)
        assert c.read(512 * KiB + 7, 256 * KiB) == bytes(256 * KiB)


def test_fast_zero_fails_fast_where_the_file_system_would_write_zeroes(nbd, small_fs):
    """tmpfs punches holes but has no FALLOC_FL_ZERO_RANGE: a NO_HOLE fast zero would be written zeroes."""
    path = small_fs / "disk.img"
    _sparse_file(path, MiB, [(0, 128 * KiB)])
    before = path.read_bytes()
    srv = nbd({"f": open_file_store(str(path))})
    with Client(srv.port) as c:
        connect_with_allocation(c, "f")
        c.send_request("WRITE_ZEROES", 0, 64 * KiB, handle=1, flags=FLAG_FAST_ZERO | FLAG_NO_HOLE)
        assert c.reply()[:2] == (1, ENOTSUP)
        assert c.read(0, 128 * KiB) == before[:128 * KiB]               # nothing changed
        c.send_request("WRITE_ZEROES", 0, 64 * KiB, handle=2, flags=FLAG_NO_HOLE)   # slow is fine unasked
        assert c.reply()[:2] == (2, 0)
        c.send_request("WRITE_ZEROES", 64 * KiB, 64 * KiB, handle=3, flags=FLAG_FAST_ZERO)   # punching is fast
        assert c.reply()[:2] == (3, 0)
        assert c.read(0, 128 * KiB) == bytes(128 * KiB)
        assert c.block_status(0, MiB)[2] == [(64 * KiB, 0), (MiB - 64 * KiB, HOLE)]


def test_the_advertised_maximum_block_size_is_what_is_enforced(nbd):
    srv = nbd({"": MemoryStore(64 * MiB)})
    with Client(srv.port) as c:
        c.greeting()
        replies = c.go("", info=(3,))                    # NBD_INFO_BLOCK_SIZE
        (data,) = [d for r, d in replies if r == REP_INFO and struct.unpack_from(">H", d)[0] == 3]
        _, lo, pref, hi = struct.unpack(">HIII", data)
        assert (lo, pref) == (1, 4096)
        c.send_request("READ", 0, hi, handle=1)
        assert c.reply(hi)[:2] == (1, 0)
        c.send_request("READ", 0, hi + 1, handle=2)
        assert c.reply()[:2] == (2, EINVAL)
        assert c.write(lo, b"x" * lo) == 0               # the minimum is 1: any alignment
        assert c.read(1, 1) == b"x"


def test_workers_share_the_allocation_map(impl):
    """``--workers 2``: what one worker's client wrote and trimmed, the other worker's client sees."""
    from .test_workers import Workers, owner

    w = Workers(impl, "--size", "64M")
    clients: list[Client] = []
    try:
        by_worker: dict[int, Client] = {}
        pids = w.pids()
        for _ in range(64):
            c = Client(w.port)
            clients.append(c)
            connect_with_allocation(c)
            by_worker.setdefault(owner(c, pids), c)
            if len(by_worker) == 2:
                break
        assert len(by_worker) == 2, "64 connections all landed on one worker"
        a, b = by_worker.values()
        assert a.write(MiB, os.urandom(MiB)) == 0
        a.send_request("TRIM", MiB + 256 * KiB, 256 * KiB, handle=3)
        assert a.reply()[:2] == (3, 0)
        assert b.block_status(0, 4 * MiB)[2] == [(MiB, HOLE), (256 * KiB, 0), (256 * KiB, HOLE), (512 * KiB, 0),
                                                 (2 * MiB, HOLE)]
    finally:
        for c in clients:
            c.close()
        w.proc.send_signal(signal.SIGTERM)          # the workers stop with it (a SIGKILL would orphan them)
        _, err = w.proc.communicate(timeout=30)
    assert w.proc.returncode == 0 and "Traceback" not in err, err[-3000:]
