"""Closing a uring group while the kernel still owes zero-copy notifications."""

from __future__ import annotations

import logging

import netimpl
from netimpl.uring import group as ugroup


def test_group_closed_with_notifications_owed_keeps_its_ring(monkeypatch, caplog):
    caplog.set_level(logging.WARNING, logger="netimpl")
    monkeypatch.setattr(ugroup, "CLOSE_WAIT", 0.1)
    monkeypatch.setattr(ugroup, "_abandoned", [])
    gi = netimpl.registry.get("uring").group_impl_create()
    ring = gi.ring
    gi._ops[12345] = (ugroup.SEND, None, [])  # a notification the kernel will never post
    gi.close()
    assert ugroup._abandoned == [ring] and not ring.closed  # never unmapped under the kernel
    assert any("still owed" in r.getMessage() for r in caplog.records)
    ring.close()


def test_group_closed_with_nothing_owed_frees_its_ring():
    gi = netimpl.registry.get("uring").group_impl_create()
    ring = gi.ring
    gi.close()
    assert ring.closed
