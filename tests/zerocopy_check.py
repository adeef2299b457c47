"""Shared checks for zero-copy on a real kernel path (loopback forced, or veth in a netns).

Every buffer is overwritten in its own callback: if any callback ran while
the kernel could still read the buffer, the receiver would see the poison.
"""

from __future__ import annotations

import hashlib
import time

import netimpl

POISON = 0xEE


def send_poisoned(sender: netimpl.Sock, group: netimpl.SockGroup, nreqs: int, size: int,
                  close_early: bool = False, timeout: float = 30.0) -> tuple[list[int], str]:
    """Queue ``nreqs`` requests of ``size`` bytes on ``sender`` (in ``group``); poison each in its callback.

    With ``close_early`` the socket is closed as soon as everything is queued
    and flushed once, so zero-copy sends are still in flight at close.
    Returns the statuses in completion order and the sha256 of what was sent.
    """
    h = hashlib.sha256()
    statuses: list[int] = []
    counts = [0] * nreqs
    for i in range(nreqs):
        buf = bytearray(bytes([i % 200]) * size)
        h.update(buf)

        def cb(req, status, i=i, buf=buf):
            counts[i] += 1
            statuses.append(status)
            buf[:] = bytes([POISON]) * len(buf)

        sender.writev_async(netimpl.Request([buf], cb=cb))
    group.poll()
    if close_early:
        sender.close()
    deadline = time.monotonic() + timeout
    while len(statuses) < nreqs and time.monotonic() < deadline:
        group.poll(timeout=0.01)
    assert counts == [1] * nreqs, f"callbacks per request: {counts}"
    return statuses, h.hexdigest()
