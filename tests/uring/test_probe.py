"""uring's probe: each way it can be unavailable is reported in words a user can act on."""

from __future__ import annotations

import netimpl
from netimpl import features
from netimpl.uring import UringImpl
from netimpl.uring import ring as ring_mod


def test_available_here_and_ranked_above_posix():
    infos = {i.name: i for i in netimpl.impls()}
    assert infos["uring"].available, infos["uring"].reason
    assert infos["uring"].priority > infos["posix"].priority
    assert netimpl.default_impl() == "uring"


def test_kernel_refusal_is_reported(monkeypatch):
    monkeypatch.setattr(features, "io_uring_reason",
                        lambda: "io_uring is disabled system-wide (sysctl kernel.io_uring_disabled=2)")
    assert "kernel.io_uring_disabled" in UringImpl().probe()


def test_missing_c_core_is_reported(monkeypatch):
    monkeypatch.setattr(ring_mod, "lib", None)
    monkeypatch.setattr(ring_mod, "IMPORT_ERROR", "No module named 'netimpl.uring._ring'")
    reason = UringImpl().probe()
    assert "not built" in reason and "_ring" in reason and "gcc" in reason


def test_missing_opcode_is_reported(monkeypatch):
    monkeypatch.setattr(ring_mod.Ring, "probe_opcode", lambda self, op: op != ring_mod.lib.IORING_OP_SENDMSG)
    assert UringImpl().probe() == "the kernel's io_uring lacks IORING_OP_SENDMSG"


def test_zero_copy_opcode_is_detected():
    impl = UringImpl()
    assert impl.probe() == ""
    assert impl.zerocopy_opcode  # SENDMSG_ZC exists on 6.1+
