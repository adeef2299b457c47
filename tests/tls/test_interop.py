"""The TLS layer against peers no one here wrote: Python's own ssl sockets, openssl s_client and s_server.

Also STARTTLS: a plaintext exchange, then TLS on the same connection, upgraded
from inside the socket's read callback with its plaintext reply still queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import ssl
import subprocess
import threading

import pytest

import netimpl
from netimpl import aio, tls
from tests.conformance.conftest import pattern
from tests.conftest import need
from tests.tls.conftest import Reader, drive


class Echo:
    """A server read callback that sends back what it reads (optionally transformed)."""

    def __init__(self, transform=bytes) -> None:
        self.transform = transform
        self.error: BaseException | None = None
        self.eof = False
        self._buf = bytearray(65536)

    def __call__(self, group, sock) -> None:
        try:
            n = sock.recv_into(self._buf)
        except OSError as exc:
            self.error = exc
            return
        if n == 0:
            self.eof = True
        elif n:
            sock.writev_async(netimpl.Request([self.transform(self._buf[:n])]))


def _in_thread(fn) -> tuple[threading.Thread, dict]:
    out: dict = {}

    def run():
        try:
            out["result"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            out["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


def _serve_until(group, thread, timeout=10.0):
    drive(group, lambda: not thread.is_alive(), timeout=timeout)


def test_python_ssl_client_against_a_tls_sock_server(net, certs):
    g = net.group()
    lsock = net.listen()
    port = lsock.getaddr()[1]
    echo = Echo()
    data = pattern(500_000, 5)

    def client():
        ctx = ssl.create_default_context(cafile=str(certs.good / "ca-cert.pem"))
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
                ctx.wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall(data)
            got = bytearray()
            while len(got) < len(data):
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
            return bytes(got), s.version()

    t, out = _in_thread(client)
    server = net.accept(lsock)
    g.add_sock(server, echo)
    ts = tls.wrap(server, tls.server_context(certs.good), server_side=True)
    net.socks.append(ts)
    _serve_until(g, t)
    assert "error" not in out, out.get("error")
    got, version = out["result"]
    assert got == data and version == "TLSv1.3"


def test_a_tls_sock_client_against_a_python_ssl_server(net, certs):
    g = net.group()
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    sctx = tls.server_context(certs.good)

    def server():
        with listener, listener.accept()[0] as raw, sctx.wrap_socket(raw, server_side=True) as s:
            s.settimeout(10)
            got = bytearray()
            while not got.endswith(b"\n"):
                got += s.recv(1000)
            s.sendall(got.upper())
            return bytes(got)

    t, out = _in_thread(server)
    client = net.connect("127.0.0.1", port)
    reader = Reader()
    g.add_sock(client, reader)
    tc = tls.wrap(client, tls.client_context(certs.good), server_side=False, server_hostname="localhost")
    net.socks.append(tc)
    tc.writev_async(netimpl.Request([b"hello from ", b"netimpl\n"]))
    drive(g, lambda: bytes(reader.data) == b"HELLO FROM NETIMPL\n")
    _serve_until(g, t)
    assert out.get("result") == b"hello from netimpl\n"


def test_starttls_from_inside_the_read_callback(net, certs):
    """The NBD_OPT_STARTTLS shape: plaintext, a plaintext reply queued, then TLS on the same socket."""
    g = net.group()
    lsock = net.listen()
    port = lsock.getaddr()[1]
    sctx = tls.server_context(certs.good)
    state: dict = {"tls": None, "plain": bytearray()}
    buf = bytearray(4096)

    def readable(group, sock):
        if state["tls"] is None:
            n = sock.recv_into(buf)
            if not n:
                return
            state["plain"] += buf[:n]
            if state["plain"].endswith(b"STARTTLS\n"):
                sock.writev_async(netimpl.Request([b"OK, go ahead\n"]))  # still queued when TLS starts
                state["tls"] = tls.wrap(sock, sctx, server_side=True)  # keeps this callback
                net.socks.append(state["tls"])
            return
        assert sock is state["tls"]
        n = sock.recv_into(buf)
        if n:
            sock.writev_async(netimpl.Request([b"secure:" + bytes(buf[:n])]))

    def client():
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            raw.sendall(b"hello\nSTARTTLS\n")
            reply = b""
            while not reply.endswith(b"\n"):
                reply += raw.recv(1)  # byte by byte: nothing of the TLS stream is read as plaintext
            ctx = ssl.create_default_context(cafile=str(certs.good / "ca-cert.pem"))
            with ctx.wrap_socket(raw, server_hostname="localhost") as s:
                s.sendall(b"ping")
                return reply, s.recv(100)

    t, out = _in_thread(client)
    server = net.accept(lsock)
    g.add_sock(server, readable)
    _serve_until(g, t)
    assert "error" not in out, out.get("error")
    assert out["result"] == (b"OK, go ahead\n", b"secure:ping")
    assert state["tls"] in g.socks and server not in g.socks


def test_a_tls_pair_driven_by_asyncio(tnet, certs):
    g = tnet.group()
    tc, _ts, creader, _ = tnet.tls_pair(certs, g, server_cb=Echo())

    async def main():
        task = asyncio.ensure_future(aio.run(g))
        try:
            status = await asyncio.wait_for(aio.send(tc, [b"via ", b"asyncio"]), 10)
            for _ in range(1000):
                if bytes(creader.data) == b"via asyncio":
                    break
                await asyncio.sleep(0.005)
            return status
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    assert asyncio.run(main()) == 0
    assert bytes(creader.data) == b"via asyncio"


@pytest.fixture
def openssl_cmd():
    if shutil.which("openssl") is None:
        pytest.skip("no openssl command")
    return "openssl"


def test_openssl_s_client_against_a_tls_sock_server(net, certs, openssl_cmd):
    g = net.group()
    lsock = net.listen()
    port = lsock.getaddr()[1]
    echo = Echo(lambda b: bytes(b).upper())
    proc = subprocess.Popen([openssl_cmd, "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost",
                             "-CAfile", str(certs.good / "ca-cert.pem"), "-verify_return_error", "-quiet"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        server = net.accept(lsock)
        g.add_sock(server, echo)
        ts = tls.wrap(server, tls.server_context(certs.good), server_side=True)
        net.socks.append(ts)
        proc.stdin.write(b"shout this\n")  # type: ignore[union-attr]
        proc.stdin.flush()  # type: ignore[union-attr]
        drive(g, lambda: ts.stats.bytes_sent >= 11)
        drive(g, lambda: ts.queued_bytes == 0)
        g.remove_sock(ts)
        ts.close()  # close_notify: s_client ends
        out, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
        proc.wait()
    assert b"SHOUT THIS\n" in out, err


@contextlib.contextmanager
def _tls_client_of(net, certs, argv):
    """Run the server ``argv(port)`` and yield (group, TLS client connected to it, its reader)."""
    probe = socket.create_server(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    proc = subprocess.Popen(argv(port), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        g = net.group()
        client = None
        for _ in range(250):
            try:
                client = net.connect("127.0.0.1", port)
                break
            except ConnectionRefusedError:
                if proc.poll() is not None:
                    break
                threading.Event().wait(0.02)
        if client is None:
            pytest.fail(f"{argv(port)[0]} did not listen: {proc.stderr.read().decode()!r}")  # type: ignore[union-attr]
        reader = Reader()
        g.add_sock(client, reader)
        tc = tls.wrap(client, tls.client_context(certs.good), server_side=False, server_hostname="localhost")
        net.socks.append(tc)
        yield g, tc, reader
    finally:
        proc.kill()
        proc.wait()


def test_a_tls_sock_client_against_openssl_s_server(net, certs, openssl_cmd):
    def argv(port):
        return [openssl_cmd, "s_server", "-accept", f"127.0.0.1:{port}", "-naccept", "1", "-rev",
                "-cert", str(certs.good / "server-cert.pem"), "-key", str(certs.good / "server-key.pem")]

    with _tls_client_of(net, certs, argv) as (g, tc, reader):
        tc.writev_async(netimpl.Request([b"stressed\n"]))
        drive(g, lambda: b"desserts" in reader.data)


@pytest.fixture
def gnutls():
    """GnuTLS is what NBD's clients (libnbd, qemu) speak TLS with."""
    if shutil.which("gnutls-cli") is None or shutil.which("gnutls-serv") is None:
        need("gnutls-cli and gnutls-serv test interop with GnuTLS (apt-get install gnutls-bin)")


@pytest.mark.parametrize("client_cert", [False, True], ids=["anonymous-client", "client-cert"])
def test_gnutls_cli_against_a_tls_sock_server(net, certs, gnutls, client_cert):
    g = net.group()
    lsock = net.listen()
    port = lsock.getaddr()[1]
    cmd = ["gnutls-cli", "-p", str(port), "--x509cafile", str(certs.good / "ca-cert.pem"),
           "--verify-hostname", "localhost", "127.0.0.1"]
    if client_cert:
        cmd[1:1] = ["--x509certfile", str(certs.good / "client-cert.pem"),
                    "--x509keyfile", str(certs.good / "client-key.pem")]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        server = net.accept(lsock)
        g.add_sock(server, Echo(lambda b: bytes(b).upper()))
        ts = tls.wrap(server, tls.server_context(certs.good, verify_peer=client_cert), server_side=True)
        net.socks.append(ts)
        drive(g, lambda: ts.established)
        if client_cert:
            assert ts.ssl_object.getpeercert()["subject"] == ((("commonName", "netimpl test client"),),)
        proc.stdin.write(b"gnutls speaks\n")  # type: ignore[union-attr]
        proc.stdin.flush()  # type: ignore[union-attr]
        drive(g, lambda: ts.stats.bytes_sent >= 14 and ts.queued_bytes == 0)
        g.remove_sock(ts)
        ts.close()  # close_notify: gnutls-cli ends
        out, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
        proc.wait()
    assert b"GNUTLS SPEAKS" in out, err


def test_gnutls_cli_refuses_a_server_its_ca_did_not_sign(net, certs, gnutls):
    g = net.group()
    lsock = net.listen()
    port = lsock.getaddr()[1]
    proc = subprocess.Popen(["gnutls-cli", "-p", str(port), "--x509cafile", str(certs.other / "ca-cert.pem"),
                             "--verify-hostname", "localhost", "127.0.0.1"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        server = net.accept(lsock)
        reader = Reader()
        g.add_sock(server, reader)
        ts = tls.wrap(server, tls.server_context(certs.good), server_side=True)
        net.socks.append(ts)
        drive(g, lambda: reader.error is not None or reader.eof)
        _out, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode != 0
    assert b"certificate" in err.lower(), err
    assert isinstance(reader.error, ssl.SSLError) or reader.eof  # its alert, or its hang-up


def test_a_tls_sock_client_against_gnutls_serv(net, certs, gnutls):
    def argv(port):
        return ["gnutls-serv", "--echo", "-p", str(port), "--x509certfile", str(certs.good / "server-cert.pem"),
                "--x509keyfile", str(certs.good / "server-key.pem")]

    with _tls_client_of(net, certs, argv) as (g, tc, reader):
        lines = [b"echo me\n"] + [b"line %d %s\n" % (i, b"x" * 200) for i in range(5)]
        for line in lines:  # gnutls-serv --echo answers line by line
            tc.writev_async(netimpl.Request([line]))
            drive(g, lambda line=line: bytes(reader.data).endswith(line))
        assert bytes(reader.data) == b"".join(lines)
