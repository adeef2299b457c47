"""Fixtures of the TLS layer's tests: throwaway certificates, TLS pairs over every backend."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

import netimpl
from netimpl import tls
from tests.conformance.conftest import Net, impl, mixed, net, wait_for  # noqa: F401 - fixtures re-exported
from tests.conftest import need

_EXT_SERVER = "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
_EXT_CLIENT = "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _key_and_csr(d: Path, name: str, cn: str) -> None:
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}-key.pem", "-out", f"{name}.csr", "-subj", f"/CN={cn}", cwd=d)


def _ca(d: Path, cn: str) -> None:
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", "ca-key.pem", "-out", "ca-cert.pem", "-days", "2", "-subj", f"/CN={cn}",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)


def _sign(d: Path, name: str, ext: str) -> None:
    (d / f"{name}.ext").write_text(ext)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca-cert.pem", "-CAkey", "ca-key.pem",
             "-CAcreateserial", "-out", f"{name}-cert.pem", "-days", "2", "-extfile", f"{name}.ext", cwd=d)


class Certs:
    """Certificate directories in nbdkit's layout.

    ``good``: a CA, a server certificate for localhost/127.0.0.1/::1 and a
    client certificate it signed. ``other``: another CA with its own server
    and client certificates (what ``good``'s CA does not know).
    ``mismatched``: good's server certificate with other's server key.
    """

    def __init__(self, root: Path) -> None:
        self.good = root / "good"
        self.other = root / "other"
        self.mismatched = root / "mismatched"
        for d, cn in ((self.good, "netimpl test CA"), (self.other, "another CA")):
            d.mkdir()
            _ca(d, cn)
            _key_and_csr(d, "server", "localhost")
            _sign(d, "server", _EXT_SERVER)
            _key_and_csr(d, "client", "netimpl test client")
            _sign(d, "client", _EXT_CLIENT)
        self.mismatched.mkdir()
        shutil.copy(self.good / "server-cert.pem", self.mismatched / "server-cert.pem")
        shutil.copy(self.other / "server-key.pem", self.mismatched / "server-key.pem")
        shutil.copy(self.good / "ca-cert.pem", self.mismatched / "ca-cert.pem")

    def client_only_ca(self, root: Path, which: str = "good") -> Path:
        """A client directory with ``which``'s CA and no client certificate."""
        d = root / f"ca-only-{which}"
        d.mkdir(exist_ok=True)
        shutil.copy(getattr(self, which) / "ca-cert.pem", d / "ca-cert.pem")
        return d


@pytest.fixture(scope="session")
def certs(tmp_path_factory) -> Certs:
    if shutil.which("openssl") is None:
        need("the openssl command makes the test certificates (apt-get install openssl)")
    return Certs(tmp_path_factory.mktemp("tls-certs"))


def drive(group: netimpl.SockGroup, cond, timeout: float = 10.0, poll_timeout: float = 0.01) -> None:
    """Poll ``group`` until ``cond()``; fail after ``timeout`` seconds (never hangs)."""
    wait_for(cond, lambda: group.poll(timeout=poll_timeout), timeout)


class Reader:
    """A read callback that collects what arrives, and the EOF or the error that ends it."""

    def __init__(self, size: int = 65536) -> None:
        self.data = bytearray()
        self.eof = False
        self.error: BaseException | None = None
        self.calls = 0
        self._buf = bytearray(size)

    def __call__(self, group: netimpl.SockGroup, sock: netimpl.Sock) -> None:
        self.calls += 1
        if self.eof or self.error is not None:
            return
        try:
            n = sock.recv_into(self._buf)
        except OSError as exc:
            self.error = exc
            return
        if n == 0:
            self.eof = True
        elif n:
            self.data += self._buf[:n]


class TlsNet(Net):
    """Net, plus TLS pairs: both ends wrapped, in one group, served by its polls alone."""

    def tls_pair(self, certs: Certs, group: netimpl.SockGroup, *, server_ctx=None, client_ctx=None,
                 server_cb=None, client_cb=None, host: str = "127.0.0.1"):
        client, server = self.pair(host)
        server_cb = server_cb or Reader()
        client_cb = client_cb or Reader()
        group.add_sock(server, server_cb)
        group.add_sock(client, client_cb)
        ts = tls.wrap(server, server_ctx or tls.server_context(certs.good), server_side=True)
        tc = tls.wrap(client, client_ctx or tls.client_context(certs.good), server_side=False,
                      server_hostname="localhost")
        self.socks += [ts, tc]
        return tc, ts, client_cb, server_cb


@pytest.fixture
def tnet(impl):  # noqa: F811 - the conformance fixture, taken by name
    n = TlsNet(impl)
    yield n
    n.close()


def wait_established(group: netimpl.SockGroup, *socks: tls.TlsSock) -> None:
    drive(group, lambda: all(s.established for s in socks))


__all__ = ["Certs", "Reader", "TlsNet", "drive", "wait_established"]
