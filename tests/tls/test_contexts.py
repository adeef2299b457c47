"""SSLContexts from nbdkit/qemu certificate directories, and what TLS-PSK says here."""

from __future__ import annotations

import errno
import ssl

import pytest

import netimpl
from netimpl import tls
from tests.tls.conftest import Reader, drive


def test_server_and_client_contexts_from_a_directory(certs):
    sctx = tls.server_context(certs.good)
    assert sctx.verify_mode == ssl.CERT_NONE  # as nbdkit: client certificates are not asked for by default
    assert tls.server_context(certs.good, verify_peer=True).verify_mode == ssl.CERT_REQUIRED
    cctx = tls.client_context(certs.good)
    assert cctx.check_hostname and cctx.verify_mode == ssl.CERT_REQUIRED
    assert sctx.minimum_version == ssl.TLSVersion.TLSv1_2


def test_a_missing_file_is_named(certs, tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        tls.server_context(tmp_path)
    assert e.value.errno == errno.ENOENT and "server-cert.pem" in str(e.value)
    with pytest.raises(FileNotFoundError, match="ca-cert.pem"):
        tls.client_context(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        tls.server_context(tmp_path / "nowhere")
    only_cert = tmp_path / "half"
    only_cert.mkdir()
    (only_cert / "ca-cert.pem").write_bytes((certs.good / "ca-cert.pem").read_bytes())
    (only_cert / "client-cert.pem").write_bytes((certs.good / "client-cert.pem").read_bytes())
    with pytest.raises(FileNotFoundError, match="client-key.pem"):
        tls.client_context(only_cert)
    with pytest.raises(TypeError, match="path"):
        tls.server_context(42)  # type: ignore[arg-type]


def test_a_key_that_does_not_match_its_certificate_is_refused_at_once(certs):
    with pytest.raises(ValueError, match="server-key.pem") as e:
        tls.server_context(certs.mismatched)
    assert "server-cert.pem" in str(e.value)


def test_psk_files_in_psktool_format(tmp_path):
    f = tmp_path / "keys.psk"
    f.write_text("# psktool -u alice -p keys.psk\nalice:0123456789abcdef0123456789abcdef\nbob:00ff\n")
    assert tls.load_psk_file(f) == {"alice": bytes.fromhex("0123456789abcdef0123456789abcdef"), "bob": b"\x00\xff"}
    for text, what in (("alice\n", "identity:hexkey"), ("alice:xyz\n", "not hexadecimal"), ("alice:\n", "empty"),
                       ("\n", "holds no")):
        f.write_text(text)
        with pytest.raises(ValueError, match=what):
            tls.load_psk_file(f)


def test_psk_works_or_says_what_is_missing(tnet, tmp_path):
    """Where ssl has PSK callbacks (3.13+) a PSK session round-trips; elsewhere one clear sentence."""
    f = tmp_path / "keys.psk"
    f.write_text("alice:0123456789abcdef\n")
    if hasattr(ssl.SSLContext, "set_psk_server_callback"):
        return _psk_round_trip(tnet, tmp_path)  # Python 3.13+: PSK works, and is tested end to end
    with pytest.raises(netimpl.NetImplError) as e:
        tls.psk_server_context(f)
    msg = str(e.value)
    assert "set_psk_server_callback" in msg and "3.13" in msg and "\n" not in msg
    with pytest.raises(netimpl.NetImplError, match="PSK"):
        tls.psk_client_context(f)


def _psk_round_trip(tnet, tmp_path):
    f = tmp_path / "keys.psk"
    f.write_text("alice:0123456789abcdef0123456789abcdef\n")
    g = tnet.group()
    client, server = tnet.pair()
    sreader = Reader()
    g.add_sock(server, sreader)
    g.add_sock(client, Reader())
    ts = tls.wrap(server, tls.psk_server_context(f), server_side=True)
    tc = tls.wrap(client, tls.psk_client_context(f), server_side=False)
    tnet.socks += [ts, tc]
    tc.writev_async(netimpl.Request([b"psk"]))
    drive(g, lambda: bytes(sreader.data) == b"psk")
