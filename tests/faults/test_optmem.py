"""Zero-copy under optmem exhaustion: the kernel refuses MSG_ZEROCOPY, the sends go by copy, nothing is lost.

A zero-copy ``sendmsg`` charges its completion notification to the
socket's option memory until the notification is read from the error
queue; with ``net.core.optmem_max`` (per namespace since Linux 6.9) set
very low, the kernel answers ``ENOBUFS``. The server runs in the client
namespace of the link with optmem_max lowered there (never in the root
namespace: other processes share it) and sends to a reader in this
process; every buffer is poisoned in its callback. io_uring's SEND_ZC
accounts its notifications elsewhere, so for uring the case checks that
nothing changes.
"""

from __future__ import annotations

import hashlib
import logging
import socket
import threading
import time

import pytest

import netimpl
from tests.zerocopy_check import POISON, send_poisoned

from .conftest import backend_params, backends_of, scale
from .peers import Peers

OPTMEM = "/proc/sys/net/core/optmem_max"
LOW_OPTMEM = 1024
SIZE = 256 << 10


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(f"{record.levelname} {record.getMessage()}")


def _zero_copy_server(backends: list[str], host: str, nreqs: int, conn) -> None:
    """In the client namespace: lower optmem_max, accept one reader per backend, send poisoned requests."""
    errors = _Errors()
    logging.getLogger("netimpl").addHandler(errors)
    with open(OPTMEM) as f:
        saved = f.read().strip()
    result: dict = {"error": ""}
    try:
        with open(OPTMEM, "w") as f:
            f.write(str(LOW_OPTMEM))
        lsocks = [netimpl.listen(host, 0, impl=b) for b in backends]
        conn.send([ls.getaddr()[1] for ls in lsocks])
        group = netimpl.SockGroup()
        socks = []
        for ls in lsocks:
            deadline = time.monotonic() + 10
            while (s := ls.accept()) is None:
                if time.monotonic() > deadline:
                    raise TimeoutError("the reader did not connect")
                time.sleep(0.001)
            group.add_sock(s, lambda g, s: None)
            socks.append(s)
        result["zerocopy"] = [s.zerocopy for s in socks]
        result["sent"] = [send_poisoned(s, group, nreqs, SIZE) for s in socks]
        result["stats"] = [(s.impl_name, s.stats.zerocopy_sends, s.stats.zerocopy_fallbacks,
                            s.stats.zerocopy_copied) for s in socks]
        for s in socks:
            group.remove_sock(s)
            s.close()
        for ls in lsocks:
            ls.close()
        group.close()
    except Exception as exc:  # noqa: BLE001 - any failure is the report
        result["error"] = repr(exc)
    finally:
        with open(OPTMEM, "w") as f:
            f.write(saved)
    result["log"] = errors.messages
    conn.send(result)


def _read_all(host: str, port: int, out: list) -> None:
    s = socket.create_connection((host, port), timeout=30)
    h, n, poisoned = hashlib.sha256(), 0, False
    buf = bytearray(1 << 20)
    while k := s.recv_into(buf):
        view = memoryview(buf)[:k]
        h.update(view)
        n += k
        poisoned = poisoned or bytes([POISON]) * 64 in view
    s.close()
    out.append((n, h.hexdigest(), poisoned))


@pytest.mark.parametrize("impl", backend_params())
def test_zero_copy_sends_fall_back_to_copy_when_optmem_is_exhausted(link, ledger, impl):
    backends = backends_of(impl)
    nreqs = scale(48, 400)
    peers = Peers(link)
    readers: list[threading.Thread] = []
    got: list[list] = [[] for _ in backends]
    try:
        conn = peers.start(_zero_copy_server, backends, link.client_ip, nreqs)
        assert conn.poll(10), "the server in the namespace did not start"
        ports = conn.recv()
        for k, port in enumerate(ports):
            readers.append(threading.Thread(target=_read_all, args=(link.client_ip, port, got[k]), daemon=True))
            readers[-1].start()
        assert conn.poll(60), "the server did not finish"
        result = conn.recv()
        for t in readers:
            t.join(30)
        assert not result["error"], result
        assert all(result["zerocopy"]), "zero-copy should be in force on the veth"
        for k, (statuses, digest) in enumerate(result["sent"]):
            assert statuses == [0] * nreqs, f"{backends[k]}: statuses {sorted(set(statuses))}"
            n, peer_digest, poisoned = got[k][0]
            assert not poisoned, f"{backends[k]}: a buffer was handed back while the kernel still read it"
            assert n == nreqs * SIZE and peer_digest == digest, f"{backends[k]}: {n} of {nreqs * SIZE} bytes"
            ledger.verified(impl, n)
        assert not result["log"], result["log"]
        for name, zc_sends, fallbacks, _copied in result["stats"]:
            if name == "posix":
                assert fallbacks > 0, f"optmem_max {LOW_OPTMEM} never made the kernel refuse zero-copy"
            if fallbacks:
                ledger.fault(impl, "zero-copy refused (ENOBUFS)", fallbacks)
    finally:
        peers.close()
