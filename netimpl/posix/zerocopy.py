"""MSG_ZEROCOPY completions: parsing the error queue and tracking sends.

Facts (Documentation/networking/msg_zerocopy.rst):

* Each ``sendmsg(MSG_ZEROCOPY)`` that sends any byte takes the next value of
  a per-socket 32-bit counter, starting at 0 and wrapping at 2**32; a call
  that sends nothing gives its value back.
* When the kernel no longer references the pages of some sends it queues a
  ``sock_extended_err`` with ``ee_origin == SO_EE_ORIGIN_ZEROCOPY`` on the
  socket's error queue: ``ee_info..ee_data`` is the inclusive range of
  counter values released, possibly several sends merged, possibly with
  ``ee_data < ee_info`` across the wrap. ``SO_EE_CODE_ZEROCOPY_COPIED`` in
  ``ee_code`` says the kernel copied the data after all (loopback, a
  device without scatter-gather).
* The cmsg is ``SOL_IP/IP_RECVERR`` on IPv4 sockets and
  ``SOL_IPV6/IPV6_RECVERR`` on IPv6 ones (SPDK missed the latter: #2257).
* Reading the error queue never consumes the socket's pending error.
"""

from __future__ import annotations

import socket
import struct
from typing import Iterator, NamedTuple

from .._kernel import IP_RECVERR, IPV6_RECVERR, SOL_IPV6, SO_EE_CODE_ZEROCOPY_COPIED, SO_EE_ORIGIN_ZEROCOPY, ZC_INDEX_MASK

# struct sock_extended_err { __u32 ee_errno; __u8 ee_origin, ee_type, ee_code, ee_pad; __u32 ee_info, ee_data; }
SOCK_EXTENDED_ERR = struct.Struct("=IBBBBII")

_RECVERR = {(socket.SOL_IP, IP_RECVERR), (SOL_IPV6, IPV6_RECVERR)}


class ZcRange(NamedTuple):
    lo: int
    hi: int
    copied: bool

    def __len__(self) -> int:  # type: ignore[override]
        return ((self.hi - self.lo) & ZC_INDEX_MASK) + 1


def parse_zerocopy_cmsg(level: int, type_: int, data: bytes) -> ZcRange | None:
    """The zero-copy range in one cmsg, or ``None`` if it is not a zero-copy notification."""
    if (level, type_) not in _RECVERR or len(data) < SOCK_EXTENDED_ERR.size:
        return None
    ee_errno, origin, _type, code, _pad, info, data_ = SOCK_EXTENDED_ERR.unpack_from(data)
    if origin != SO_EE_ORIGIN_ZEROCOPY or ee_errno != 0:
        return None
    return ZcRange(info, data_, bool(code & SO_EE_CODE_ZEROCOPY_COPIED))


def range_indices(lo: int, hi: int) -> Iterator[int]:
    """The counter values ``lo..hi`` inclusive, across the 32-bit wrap."""
    n = ((hi - lo) & ZC_INDEX_MASK) + 1
    for k in range(n):
        yield (lo + k) & ZC_INDEX_MASK


def in_range(idx: int, lo: int, hi: int) -> bool:
    """``lo <= idx <= hi`` on the wrapping counter."""
    return ((idx - lo) & ZC_INDEX_MASK) <= ((hi - lo) & ZC_INDEX_MASK)


class ZcTracker:
    """Zero-copy sends in flight on one socket: counter value -> requests it touched."""

    __slots__ = ("next_index", "inflight")

    def __init__(self) -> None:
        self.next_index = 0
        self.inflight: dict[int, list] = {}

    def sent(self, reqs: list) -> int:
        idx = self.next_index
        self.next_index = (idx + 1) & ZC_INDEX_MASK
        self.inflight[idx] = reqs
        return idx

    def released(self, r: ZcRange) -> Iterator[list]:
        """The request lists of the sends ``r`` releases (unknown values are skipped)."""
        inflight = self.inflight
        if len(r) <= len(inflight):
            for idx in range_indices(r.lo, r.hi):
                reqs = inflight.pop(idx, None)
                if reqs is not None:
                    yield reqs
        else:  # a range wider than what is in flight: look only at what is
            for idx in [i for i in inflight if in_range(i, r.lo, r.hi)]:
                yield inflight.pop(idx)
