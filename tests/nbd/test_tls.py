"""The NBD target over TLS (``--tls=on|require``, NBD_OPT_STARTTLS), judged by real clients."""

from __future__ import annotations

import json
import os
import ssl
import struct
import subprocess
import sys

import pytest

from tests.nbd.client import IHAVEOPT, OPT, REP_ACK, REP_SERVER, Client
from tests.nbd.conftest import run_tool, tool
from tests.tls.conftest import certs  # noqa: F401 - throwaway CA and certificates, nbdkit's layout

REP_ERR_TLS_REQD = 2**31 + 5


def nbdinfo_json(uri: str) -> dict:
    return json.loads(run_tool(tool("nbdinfo", "libnbd-bin"), "--json", uri).stdout)


@pytest.mark.parametrize("mode", ["on", "require"])
def test_tls_with_nbdinfo_nbdcopy_and_qemu_img(impl, nbd_process, certs, tmp_path, mode):  # noqa: F811
    nbdcopy, qemu_img = tool("nbdcopy", "libnbd-bin"), tool("qemu-img", "qemu-utils")
    srv = nbd_process("--size", "64M", f"--tls={mode}", "--tls-certificates", str(certs.good))
    assert f"TLS {mode}" in srv.banner[0]
    uri = f"nbds://localhost:{srv.port}/?tls-certificates={certs.good}"
    info = nbdinfo_json(uri)
    assert info["TLS"] is True, info
    assert info["exports"][0]["export-size"] == 64 << 20
    data = tmp_path / "in.img"
    data.write_bytes(os.urandom(16 << 20) + bytes(48 << 20))
    run_tool(nbdcopy, str(data), uri)
    back = tmp_path / "back.img"
    run_tool(nbdcopy, uri, str(back))
    assert back.read_bytes() == data.read_bytes()
    # qemu with a tls-creds-x509 object reads the same bytes
    out = tmp_path / "qemu.raw"
    run_tool(qemu_img, "convert", "--object", f"tls-creds-x509,id=tls0,dir={certs.good},endpoint=client",
             "--image-opts", f"driver=nbd,host=localhost,port={srv.port},tls-creds=tls0", "-O", "raw", str(out))
    assert out.read_bytes() == data.read_bytes()
    if mode == "on":                       # offered, not required: a plaintext client is served too
        plain = nbdinfo_json(f"nbd://localhost:{srv.port}")
        assert plain["TLS"] is False and plain["exports"][0]["export-size"] == 64 << 20


def test_require_refuses_plaintext_and_a_client_with_another_ca(impl, nbd_process, certs, tmp_path):  # noqa: F811
    nbdinfo = tool("nbdinfo", "libnbd-bin")
    srv = nbd_process("--size", "16M", "--tls=require", "--tls-certificates", str(certs.good))
    plain = subprocess.run([nbdinfo, f"nbd://localhost:{srv.port}"], capture_output=True, text=True, timeout=30)
    # libnbd reports NBD_REP_ERR_TLS_REQD to GO as "Operation not supported", for nbdkit --tls=require too
    assert plain.returncode != 0 and "opt_go" in plain.stderr and "export-size" not in plain.stdout, plain.stderr
    wrong_ca = certs.client_only_ca(tmp_path, "other")
    bad = subprocess.run([nbdinfo, f"nbds://localhost:{srv.port}/?tls-certificates={wrong_ca}"],
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode != 0, bad.stdout
    # The server survives both and serves a good client.
    assert nbdinfo_json(f"nbds://localhost:{srv.port}/?tls-certificates={certs.good}")["exports"]


def test_require_answers_tls_reqd_then_starttls_ignores_pipelined_plaintext(impl, nbd_process, certs):  # noqa: F811
    srv = nbd_process("--size", "16M", "--tls=require", "--tls-certificates", str(certs.good))
    with Client(srv.port) as c:
        c.greeting()
        c.option(OPT["LIST"])
        assert c.option_reply()[1] == REP_ERR_TLS_REQD
        # STARTTLS with a LIST pipelined behind it in plaintext: that LIST must never be answered.
        starttls = struct.pack(">QII", IHAVEOPT, OPT["STARTTLS"], 0)
        c.s.sendall(starttls + struct.pack(">QII", IHAVEOPT, OPT["LIST"], 0))
        assert c.option_reply()[1] == REP_ACK
        ctx = ssl.create_default_context(cafile=str(certs.good / "ca-cert.pem"))
        c.s = ctx.wrap_socket(c.s, server_hostname="localhost")
        c.option(OPT["LIST"])              # over TLS, now it is answered
        replies = c.replies_until_final()
        assert [r for r, _ in replies] == [REP_SERVER, REP_ACK]
    with Client(srv.port) as c:            # EXPORT_NAME has no error reply: before TLS it ends the session
        c.greeting()
        c.option(OPT["EXPORT_NAME"], b"")
        assert c.is_closed()


def test_tls_flags_are_checked(certs, tmp_path):  # noqa: F811
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "netimpl.nbd", "--host", "127.0.0.1", "--port", "0", *args],
                              capture_output=True, text=True, timeout=30)

    out = run("--tls=require")
    assert out.returncode == 2 and "needs one of --tls-certificates DIR or --tls-psk FILE" in out.stderr
    out = run("--tls-certificates", str(certs.good))
    assert out.returncode == 2 and "need --tls=on or --tls=require" in out.stderr
    out = run("--tls=on", "--tls-certificates", str(tmp_path))
    assert out.returncode == 2 and "server-cert.pem" in out.stderr and "Traceback" not in out.stderr
    out = run("--tls=on", "--tls-certificates", str(certs.mismatched))
    assert out.returncode == 2 and "server-key.pem" in out.stderr and "Traceback" not in out.stderr
    psk = tmp_path / "keys.psk"
    psk.write_text("alice:0123456789abcdef\n")
    out = run("--tls=require", "--tls-psk", str(psk))
    if not hasattr(ssl.SSLContext, "set_psk_server_callback"):
        assert out.returncode == 2 and "TLS-PSK is not available" in out.stderr and "3.13" in out.stderr
    out = run("--tls=bogus")
    assert out.returncode == 2 and "invalid choice" in out.stderr
