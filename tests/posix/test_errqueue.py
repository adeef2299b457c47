"""Zero-copy notifications: parsing, merged ranges, the 32-bit wrap."""

from __future__ import annotations

import socket
import struct

from netimpl import Request
from netimpl._kernel import IP_RECVERR, SO_EE_ORIGIN_ZEROCOPY
from netimpl.posix.zerocopy import ZcRange, ZcTracker, in_range, parse_zerocopy_cmsg, range_indices
from tests.posix.conftest import force_zerocopy
from tests.posix.scripted import Scripted, zc_cmsg


def test_parse_ipv4_and_ipv6_notifications():
    assert parse_zerocopy_cmsg(*zc_cmsg(3, 7)) == ZcRange(3, 7, False)
    assert parse_zerocopy_cmsg(*zc_cmsg(3, 7, copied=True, v6=True)) == ZcRange(3, 7, True)


def test_parse_ignores_other_messages():
    level, type_, data = zc_cmsg(0, 0)
    assert parse_zerocopy_cmsg(socket.SOL_SOCKET, type_, data) is None
    assert parse_zerocopy_cmsg(level, type_, data[:10]) is None
    icmp = struct.pack("=IBBBBII", 113, 2, 3, 1, 0, 0, 0)  # an ICMP error, not zero-copy
    assert parse_zerocopy_cmsg(socket.SOL_IP, IP_RECVERR, icmp) is None
    failed = struct.pack("=IBBBBII", 5, SO_EE_ORIGIN_ZEROCOPY, 0, 0, 0, 0, 0)
    assert parse_zerocopy_cmsg(socket.SOL_IP, IP_RECVERR, failed) is None


def test_range_across_the_wrap():
    assert list(range_indices(0xFFFFFFFE, 1)) == [0xFFFFFFFE, 0xFFFFFFFF, 0, 1]
    assert len(ZcRange(0xFFFFFFFE, 1, False)) == 4
    assert in_range(0, 0xFFFFFFFE, 1) and in_range(0xFFFFFFFF, 0xFFFFFFFE, 1)
    assert not in_range(2, 0xFFFFFFFE, 1) and not in_range(0xFFFFFFFD, 0xFFFFFFFE, 1)


def test_tracker_merged_and_wrapped_ranges():
    t = ZcTracker()
    t.next_index = 0xFFFFFFFE
    idx = [t.sent([f"r{i}"]) for i in range(4)]
    assert idx == [0xFFFFFFFE, 0xFFFFFFFF, 0, 1]
    got = [r for reqs in t.released(ZcRange(0xFFFFFFFE, 0, False)) for r in reqs]
    assert got == ["r0", "r1", "r2"]
    assert list(t.released(ZcRange(0xFFFFFFFE, 0, False))) == []  # released once only
    assert [r for reqs in t.released(ZcRange(1, 1, False)) for r in reqs] == ["r3"]
    assert not t.inflight


def test_tracker_range_wider_than_what_is_in_flight():
    t = ZcTracker()
    t.sent(["a"])
    t.sent(["b"])
    assert [r for reqs in t.released(ZcRange(0, 0xFFFFFFF0, False)) for r in reqs] == ["a", "b"]


def test_first_zero_copy_send_is_index_0_and_merged_notification_completes_all(pair):
    client, _ = pair
    force_zerocopy(client)
    script = client._sys = Scripted()
    log = []
    for i in range(3):
        client.writev_async(Request([bytes(1000)], cb=lambda r, st, i=i: log.append(i)))
        client.flush()
    assert sorted(client._zc.inflight) == [0, 1, 2]
    script.errqueue.append([zc_cmsg(0, 2, copied=True)])
    client.flush()
    assert log == [0, 1, 2]
    assert client.stats.zerocopy_copied == 3


def test_wrapped_notification_on_a_socket(pair):
    client, _ = pair
    force_zerocopy(client)
    client._zc.next_index = 0xFFFFFFFF
    script = client._sys = Scripted()
    log = []
    for i in range(2):
        client.writev_async(Request([bytes(10)], cb=lambda r, st, i=i: log.append(i)))
        client.flush()
    script.errqueue.append([zc_cmsg(0xFFFFFFFF, 0, v6=True)])
    client.flush()
    assert log == [0, 1]
