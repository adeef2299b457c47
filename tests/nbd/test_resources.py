"""What one client can make the server hold: buffers, file descriptors, time, memory.

Each test here is a defect a fault suite found: buffers that waited for the
cyclic collector, an accept loop that spun and flooded the log at the fd
limit, a handshake that could hold an fd forever, a banner that misreported
zero-copy, and replies that piled up without bound for a client that never
reads them.
"""

from __future__ import annotations

import gc
import struct
import time
import weakref

import pytest

from netimpl.nbd import MemoryStore, open_file_store

from .client import REQ_MAGIC, Client

MiB = 1 << 20


def wait_for(cond, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def read_requests(count: int, length: int, span: int, first_handle: int = 1) -> bytes:
    """``count`` pipelined READs of ``length`` bytes, cycling over the first ``span`` bytes."""
    per = max(1, span // length)
    return b"".join(struct.pack(">IHHQQI", REQ_MAGIC, 0, 0, first_handle + i, (i % per) * length, length)
                    for i in range(count))


@pytest.fixture
def no_gc():
    """The cyclic collector off: what is freed here is freed by reference counting alone."""
    was = gc.isenabled()
    gc.collect()
    gc.disable()
    yield
    if was:
        gc.enable()


# -- defect 5: a closed connection's buffers are released when it closes -----------------------

@pytest.mark.parametrize("kind", ["memory", "file"])
def test_a_closed_connection_and_its_reply_buffers_go_without_the_cyclic_collector(nbd, tmp_path, no_gc, kind):
    if kind == "file":
        path = tmp_path / "disk.img"
        with open(path, "wb") as f:
            f.truncate(64 * MiB)
        store = open_file_store(str(path))
        lent: list[weakref.ref] = []
        get = store._bounce.get

        def tracked_get(length):
            buf = get(length)
            lent.append(weakref.ref(buf))
            return buf

        store._bounce.get = tracked_get
    else:
        store = MemoryStore(64 * MiB)
    srv = nbd({"": store})
    with Client(srv.port) as c:
        c.connect()
        assert wait_for(lambda: len(srv.server.connections) == 1)
        conn = weakref.ref(next(iter(srv.server.connections)))
        c.s.sendall(read_requests(100, MiB, 64 * MiB))        # more lent buffers than the pool keeps
        for _ in range(100):
            c.reply(MiB)
    assert wait_for(lambda: not srv.server.connections), "the server kept the client"
    assert wait_for(lambda: conn() is None, 2.0), \
        f"the closed connection is still alive: {gc.get_referrers(conn())!r:.300}"
    if kind == "file":
        pooled = {id(b) for bufs in store._bounce._free.values() for b in bufs}
        alive = [r() for r in lent if r() is not None and id(r()) not in pooled]
        assert not alive, f"{len(alive)} reply buffers outlived their replies"
        assert store._bounce.kept <= store._bounce.KEEP_BYTES
    else:
        mm = store._mmap
        store.close()                                          # no reply still holds a slice of it
        assert mm.closed
