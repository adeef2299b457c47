"""The NBD server byte by byte: negotiation, every command, and every kind of bad client input."""

from __future__ import annotations

import os
import socket
import struct
import time

import pytest

from netimpl.nbd import MemoryStore, open_file_store

from .client import (CMD, EINVAL, EPERM, FLAG_FUA, FLAG_NO_HOLE, INFO_BLOCK_SIZE, INFO_DESCRIPTION,
                     INFO_EXPORT, INFO_NAME, OPT, REP_ACK, REP_ERR_INVALID, REP_ERR_UNKNOWN, REP_ERR_UNSUP,
                     REP_INFO, REP_SERVER, REQ_MAGIC, TF, Client)

MiB = 1 << 20


# -- negotiation -------------------------------------------------------------------------------

def test_greeting_offers_fixed_newstyle_and_no_zeroes(nbd):
    srv = nbd()
    with Client(srv.port) as c:
        assert c.greeting() == 0b11


def test_list_names_every_export_then_acks(nbd, tmp_path):
    path = tmp_path / "disk.img"
    path.write_bytes(bytes(MiB))
    srv = nbd({"": MemoryStore(4 * MiB), "disk": open_file_store(str(path))})
    with Client(srv.port) as c:
        c.greeting()
        c.option(OPT["LIST"])
        replies = c.replies_until_final()
    assert [r for r, _ in replies] == [REP_SERVER, REP_SERVER, REP_ACK]
    names = []
    for _, data in replies[:2]:
        (n,) = struct.unpack_from(">I", data)
        names.append(data[4:4 + n].decode())
    assert names == ["", "disk"]
    assert b"1 MiB" in replies[1][1]       # the human description follows the name


def test_list_with_data_is_invalid_and_negotiation_goes_on(nbd):
    srv = nbd()
    with Client(srv.port) as c:
        c.greeting()
        c.option(OPT["LIST"], b"junk")
        assert c.option_reply()[1] == REP_ERR_INVALID
        size, flags = 0, 0
        for rtype, data in c.go(""):
            if rtype == REP_INFO:
                _, size, flags = struct.unpack(">HQH", data)
        assert size == 16 * MiB


def test_info_answers_what_was_asked_and_go_enters_transmission(nbd):
    srv = nbd({"": MemoryStore(16 * MiB), "named": MemoryStore(MiB, read_only=True)})
    with Client(srv.port) as c:
        c.greeting()
        replies = c.go("named", info=(INFO_NAME, INFO_BLOCK_SIZE, INFO_DESCRIPTION), opt="INFO")
        assert replies[-1][0] == REP_ACK
        infos = {struct.unpack_from(">H", d)[0]: d for r, d in replies if r == REP_INFO}
        assert set(infos) == {INFO_EXPORT, INFO_NAME, INFO_BLOCK_SIZE, INFO_DESCRIPTION}
        _, size, flags = struct.unpack(">HQH", infos[INFO_EXPORT])
        assert size == MiB
        assert flags & TF["READ_ONLY"] and flags & TF["HAS_FLAGS"] and flags & TF["CAN_MULTI_CONN"]
        assert infos[INFO_NAME][2:] == b"named"
        _, lo, pref, hi = struct.unpack(">HIII", infos[INFO_BLOCK_SIZE])
        assert (lo, pref, hi) == (1, 4096, 32 * MiB)
        # INFO leaves negotiation open: GO the other export, and use it
        replies = c.go("")
        assert replies[-1][0] == REP_ACK
        assert c.read(0, 512) == bytes(512)


def test_unknown_options_are_unsupported(nbd):
    srv = nbd()
    with Client(srv.port) as c:
        c.greeting()
        for opt in (OPT["STARTTLS"], OPT["EXTENDED_HEADERS"], 4, 99, 0xFFFF):
            c.option(opt, b"\0" * 8)
            got_opt, rtype, _ = c.option_reply()
            assert (got_opt, rtype) == (opt, REP_ERR_UNSUP)
        c.go("")
        assert c.read(0, 16) == bytes(16)


def test_go_to_an_unknown_export_is_refused_and_negotiation_goes_on(nbd):
    srv = nbd()
    with Client(srv.port) as c:
        c.greeting()
        replies = c.go("nope")
        assert replies == [(REP_ERR_UNKNOWN, replies[0][1])] and b"nope" in replies[0][1]
        assert c.go("")[-1][0] == REP_ACK


@pytest.mark.parametrize("bad", [b"\0\0\0\5" + b"x" * 3 + b"\0\0", b"\0\0", b"\0\0\0\0\0\2\0\3"])
def test_malformed_info_requests_are_invalid(nbd, bad):
    srv = nbd()
    with Client(srv.port) as c:
        c.greeting()
        c.option(OPT["GO"], bad)
        assert c.option_reply()[1] == REP_ERR_INVALID
        assert c.go("")[-1][0] == REP_ACK


def test_export_name_answers_size_and_flags_without_zeroes(nbd):
    srv = nbd()
    with Client(srv.port) as c:
        c.greeting(client_flags=3)
        c.option(OPT["EXPORT_NAME"], b"")
        size, flags = struct.unpack(">QH", c.recv_exact(10))
        assert size == 16 * MiB and flags & TF["SEND_FLUSH"]
        assert c.read(0, 4) == bytes(4)      # the next bytes are the reply, not 124 zeroes


def test_export_name_sends_the_zeroes_when_the_client_did_not_opt_out(nbd):
    srv = nbd()
    with Client(srv.port) as c:
        c.greeting(client_flags=1)
        c.option(OPT["EXPORT_NAME"], b"")
        assert c.recv_exact(10 + 124)[10:] == bytes(124)
        assert c.read(0, 4) == bytes(4)


def test_export_name_of_an_unknown_export_ends_the_session(nbd, caplog):
    srv = nbd()
    with Client(srv.port) as c:
        c.greeting()
        c.option(OPT["EXPORT_NAME"], b"missing")
        assert c.is_closed()
    assert "unknown export 'missing'" in caplog.text


def test_abort_is_acknowledged_then_closed(nbd):
    srv = nbd()
    with Client(srv.port) as c:
        c.greeting()
        c.option(OPT["ABORT"])
        assert c.option_reply()[1] == REP_ACK
        assert c.is_closed()


@pytest.mark.parametrize("what", ["client flags", "option magic", "option length", "export name"])
def test_a_client_breaking_negotiation_is_dropped_and_others_are_served(nbd, caplog, what):
    srv = nbd()
    with Client(srv.port) as good:
        good.connect()
        with Client(srv.port) as bad:
            if what == "client flags":
                bad.greeting(client_flags=0x80)
            else:
                bad.greeting()
                if what == "option magic":
                    bad.s.sendall(struct.pack(">QII", 0x1234, OPT["LIST"], 0))
                elif what == "option length":
                    bad.s.sendall(struct.pack(">QII", 0x49484156454F5054, OPT["GO"], 1 << 30))
                else:
                    bad.option(OPT["EXPORT_NAME"], b"\xff\xfe")
            assert bad.is_closed()
        assert good.read(0, 8) == bytes(8)
    logged = {"option length": "carries 1073741824 bytes"}.get(what, what)
    assert logged in caplog.text


# -- transmission ------------------------------------------------------------------------------

@pytest.mark.parametrize("structured", [False, True], ids=["simple", "structured"])
def test_write_then_read_back_with_handles_echoed(nbd, structured):
    srv = nbd()
    with Client(srv.port) as c:
        size, flags = c.connect(structured=structured)
        assert bool(flags & TF["SEND_DF"]) == structured
        data = os.urandom(3 * 4096 + 17)
        assert c.write(12345, data, handle=0xDEADBEEFCAFEF00D) == 0
        assert c.read(12345, len(data), handle=0xFFFFFFFFFFFFFFFF) == data
        assert c.read(size - 1, 1) == bytes(1)


@pytest.mark.parametrize("structured", [False, True], ids=["simple", "structured"])
def test_pipelined_requests_are_answered_in_order(nbd, structured):
    srv = nbd()
    with Client(srv.port) as c:
        c.connect(structured=structured)
        blocks = [os.urandom(4096) for _ in range(64)]
        batch = b"".join(struct.pack(">IHHQQI", REQ_MAGIC, 0, CMD["WRITE"], 1000 + i, i * 4096, 4096) + b
                         for i, b in enumerate(blocks))
        batch += b"".join(struct.pack(">IHHQQI", REQ_MAGIC, 0, CMD["READ"], 2000 + i, i * 4096, 4096)
                          for i in range(64))
        c.s.sendall(batch)
        for i in range(64):
            assert c.reply() == (1000 + i, 0, b"")
        for i in range(64):
            assert c.reply(4096) == (2000 + i, 0, blocks[i])


@pytest.mark.parametrize("handle", [0, 1, 0xDEADBEEFCAFEF00D, 2**64 - 1])
def test_a_request_that_succeeds_is_answered_with_the_protocols_reply_bytes(handle):
    # The one-call answer to a write, flush or trim (connection._OK_*) against the protocol's layouts.
    from netimpl.nbd import connection
    from netimpl.nbd import protocol as P

    assert connection._OK_SIMPLE(handle) == P.SIMPLE_REPLY.pack(P.NBD_SIMPLE_REPLY_MAGIC, 0, handle)
    assert P.CHUNK.unpack(connection._OK_STRUCTURED(handle)) == (
        P.NBD_STRUCTURED_REPLY_MAGIC, P.NBD_REPLY_FLAG_DONE, P.NBD_REPLY_TYPE_NONE, handle, 0)
    for structured in (False, True):
        assert (connection._OK_STRUCTURED if structured else connection._OK_SIMPLE)(handle) == \
            connection._status_reply(structured, handle, 0)


def test_one_request_at_a_time_costs_one_receive_and_one_send(nbd):
    # A short read took what there was: no second receive for EAGAIN per request (libuv's rule).
    srv = nbd()
    with Client(srv.port) as c:
        c.connect()
        assert c.write(0, os.urandom(4096)) == 0
        (conn,) = srv.server.connections
        stats = conn.sock.stats
        before = stats.syscalls
        for i in range(50):
            assert len(c.read(i * 512, 512)) == 512
            assert c.write(i * 512, bytes(512)) == 0
        per_request = (stats.syscalls - before) / 100
    assert per_request <= 2.0, f"{per_request} system calls per request on the connection's socket"


def test_a_write_larger_than_the_receive_buffer_lands_intact(nbd):
    srv = nbd({"": MemoryStore(64 * MiB)})
    with Client(srv.port) as c:
        c.connect()
        data = os.urandom(32 * MiB)          # the maximum, received straight into the store
        assert c.write(5, data) == 0
        assert c.read(5, len(data)) == data


@pytest.mark.parametrize("structured", [False, True], ids=["simple", "structured"])
def test_out_of_range_and_oversized_requests_get_einval_and_the_connection_goes_on(nbd, structured, caplog):
    srv = nbd()
    with Client(srv.port) as c:
        size, _ = c.connect(structured=structured)
        c.send_request("READ", size - 4, 8, handle=1)
        assert c.reply(8) == (1, EINVAL, b"")
        c.send_request("READ", 0, 64 * MiB, handle=2)          # over the advertised maximum
        assert c.reply() == (2, EINVAL, b"")
        c.send_request("WRITE", size, 4096, handle=3, data=os.urandom(4096))   # payload read and dropped
        assert c.reply() == (3, EINVAL, b"")
        c.send_request("WRITE", 0, 33 * MiB, handle=4, data=bytes(33 * MiB))
        assert c.reply() == (4, EINVAL, b"")
        c.send_request("TRIM", size - 1, 2, handle=5)
        assert c.reply() == (5, EINVAL, b"")
        c.send_request(CMD["BLOCK_STATUS"], 0, 4096, handle=6)
        assert c.reply() == (6, EINVAL, b"")
        c.send_request(99, 0, 0, handle=7)
        assert c.reply() == (7, EINVAL, b"")
        assert c.read(0, 4096) == bytes(4096)   # nothing of the refused writes landed
    assert "past the end" in caplog.text and "unsupported command 99" in caplog.text


@pytest.mark.parametrize("structured", [False, True], ids=["simple", "structured"])
def test_a_read_only_export_refuses_every_write_with_eperm(nbd, structured):
    store = MemoryStore(MiB, read_only=True)
    srv = nbd({"ro": store})
    with Client(srv.port) as c:
        _, flags = c.connect("ro", structured=structured)
        assert flags & TF["READ_ONLY"]
        assert c.write(0, b"x" * 4096) == EPERM
        big = os.urandom(512 << 10)                              # a payload that arrives in pieces
        assert c.write(0, big) == EPERM
        for cmd in ("TRIM", "WRITE_ZEROES"):
            c.send_request(cmd, 0, 4096, handle=9)
            assert c.reply() == (9, EPERM, b"")
        c.send_request("FLUSH", handle=10)
        assert c.reply() == (10, 0, b"")
        assert c.read(0, 4096) == bytes(4096)


def test_trim_and_write_zeroes_read_back_as_zeroes(nbd):
    srv = nbd({"": MemoryStore(4 * MiB)})
    with Client(srv.port) as c:
        c.connect(structured=True)
        data = os.urandom(4 * MiB)
        assert c.write(0, data) == 0
        c.send_request("TRIM", 100, 3 * 4096, handle=1)         # unaligned edges, whole pages inside
        assert c.reply() == (1, 0, b"")
        c.send_request("WRITE_ZEROES", MiB + 1, MiB, handle=2, flags=FLAG_NO_HOLE | FLAG_FUA)
        assert c.reply() == (2, 0, b"")
        c.send_request("WRITE_ZEROES", 3 * MiB, 4096, handle=3)
        assert c.reply() == (3, 0, b"")
        want = bytearray(data)
        want[100:100 + 3 * 4096] = bytes(3 * 4096)
        want[MiB + 1:2 * MiB + 1] = bytes(MiB)
        want[3 * MiB:3 * MiB + 4096] = bytes(4096)
        assert c.read(0, 4 * MiB) == bytes(want)


def test_flush_and_fua_on_a_file_export_reach_the_file(nbd, tmp_path):
    path = tmp_path / "disk.img"
    path.write_bytes(bytes(4 * MiB))
    srv = nbd({"f": open_file_store(str(path))})
    with Client(srv.port) as c:
        c.connect("f")
        a, b = os.urandom(8192), os.urandom(300 << 10)
        assert c.write(4096, a, flags=FLAG_FUA) == 0
        assert c.write(MiB, b) == 0
        c.send_request("FLUSH", handle=3)
        assert c.reply() == (3, 0, b"")
        with open(path, "rb") as f:
            disk = f.read()
        assert disk[4096:4096 + 8192] == a and disk[MiB:MiB + len(b)] == b
        c.send_request("TRIM", 0, 2 * MiB, handle=4)
        assert c.reply() == (4, 0, b"")
        assert c.read(0, 2 * MiB) == bytes(2 * MiB)
    assert os.stat(path).st_blocks * 512 < 4 * MiB       # the trim punched a hole


def test_disc_closes_after_the_replies_before_it(nbd):
    srv = nbd()
    with Client(srv.port) as c:
        c.connect()
        data = os.urandom(4096)
        c.s.sendall(struct.pack(">IHHQQI", REQ_MAGIC, 0, CMD["WRITE"], 1, 0, 4096) + data
                    + struct.pack(">IHHQQI", REQ_MAGIC, 0, CMD["READ"], 2, 0, 4096)
                    + struct.pack(">IHHQQI", REQ_MAGIC, 0, CMD["DISC"], 3, 0, 0))
        assert c.reply() == (1, 0, b"")
        assert c.reply(4096) == (2, 0, data)
        assert c.is_closed()


@pytest.mark.parametrize("how", ["wrong magic", "truncated header", "vanished mid-payload", "reset"])
def test_a_misbehaving_client_is_dropped_and_never_touches_another(nbd, caplog, how):
    srv = nbd()
    with Client(srv.port) as good:
        good.connect()
        assert good.write(0, b"kept" * 1024) == 0
        bad = Client(srv.port)
        bad.connect()
        if how == "wrong magic":
            bad.send_request("READ", 0, 4096, magic=0x12345678)
            assert bad.is_closed()
        elif how == "truncated header":
            bad.s.sendall(struct.pack(">IHHQQI", REQ_MAGIC, 0, 0, 1, 0, 4096)[:17])
            bad.close()
        elif how == "vanished mid-payload":
            bad.s.sendall(struct.pack(">IHHQQI", REQ_MAGIC, 0, CMD["WRITE"], 1, MiB, MiB) + b"x" * 1000)
            bad.close()
        else:
            bad.s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            bad.send_request("READ", 0, 4 * MiB)
            bad.close()                                             # RST with a reply in flight
        bad.close()
        assert good.read(0, 4096) == b"kept" * 1024
        deadline = time.monotonic() + 5
        while len(srv.server.connections) != 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(srv.server.connections) == 1, "the server kept the dead client"
        assert good.read(0, 4096) == b"kept" * 1024
    if how == "wrong magic":
        assert "request magic 0x12345678" in caplog.text
    elif how != "reset":
        assert "went away in the middle of a request" in caplog.text


class _CacheBug(MemoryStore):
    """A store whose NBD_CMD_CACHE has a bug (not an OSError): an internal error of the server's."""

    def cache(self, offset: int, length: int) -> None:
        raise RuntimeError("a bug in the store")


def test_an_internal_error_serving_one_client_drops_that_client_only(nbd, caplog):
    srv = nbd({"": _CacheBug(16 * MiB)})
    with Client(srv.port) as good:
        good.connect()
        assert good.write(0, b"kept" * 1024) == 0
        with Client(srv.port) as bad:
            bad.connect()
            bad.send_request("CACHE", 0, 4096)
            assert bad.is_closed()
        assert good.read(0, 4096) == b"kept" * 1024
    errors = [r for r in caplog.get_records("call") if r.levelname == "ERROR"]
    assert len(errors) == 1 and "internal error serving the client" in errors[0].getMessage()
    assert errors[0].exc_info and "a bug in the store" in str(errors[0].exc_info[1])
    caplog.clear()  # the one ERROR is this test's point, not a broken invariant


def test_a_full_disk_is_an_enospc_reply_and_the_server_goes_on(nbd, small_fs, caplog):
    path = small_fs / "disk.img"
    with open(path, "wb") as f:
        f.truncate(4 * MiB)
    srv = nbd({"f": open_file_store(str(path))})
    with Client(srv.port) as c:
        c.connect("f", structured=True)
        assert c.write(0, os.urandom(MiB)) == 28                        # ENOSPC
        assert c.write(MiB, os.urandom(4096), flags=FLAG_FUA) in (0, 28)
        assert c.read(3 * MiB, 4096) == bytes(4096)
    assert "write at 0+1048576 failed" in caplog.text
    caplog.clear()          # the ERROR was the point of the test
