"""Conformance: a signal during poll's wait runs its handler and the wait goes on (PEP 475)."""

from __future__ import annotations

import signal
import time


def test_a_signal_does_not_cut_the_wait_short(net):
    client, server = net.pair()
    g = net.group()
    g.add_sock(server, lambda grp, s: s.recv_into(bytearray(16)))
    caught = []
    old = signal.signal(signal.SIGALRM, lambda *_: caught.append(time.monotonic()))
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        t0 = time.monotonic()
        assert g.poll(timeout=0.3) == 0
        waited = time.monotonic() - t0
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert caught, "the handler did not run"
    assert waited >= 0.25, f"poll returned after {waited:.3f}s: the signal ended the wait"


def test_an_exception_from_a_signal_handler_leaves_poll(net):
    client, server = net.pair()
    g = net.group()
    g.add_sock(server, lambda grp, s: s.recv_into(bytearray(16)))

    def handler(*_):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGALRM, handler)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        try:
            g.poll(timeout=5)
        except KeyboardInterrupt:
            pass
        else:
            raise AssertionError("poll swallowed the handler's exception")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    client.writev([b"go"])
    deadline = time.monotonic() + 5
    while not g.poll(timeout=0.1) and time.monotonic() < deadline:
        pass  # the group stays usable
    assert time.monotonic() < deadline
