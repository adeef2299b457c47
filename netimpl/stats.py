"""Counters of sockets and groups; each names its backend.

``help(netimpl.SockStats)`` lists every counter with what it counts.
"""

from __future__ import annotations

from dataclasses import dataclass

from .accel import native
from .options import describe_fields, documented


@describe_fields
@dataclass(slots=True)
class SockStats:
    """Per-socket counters (``Sock.stats``), from the socket's creation on."""

    impl: str = documented("The backend's name.")
    bytes_sent: int = documented("Bytes the kernel accepted from send calls.", default=0)
    bytes_received: int = documented("Bytes read from the kernel (into the recv pipe or the caller's buffers).",
                                     default=0)
    requests_completed: int = documented("Requests whose callback ran with status 0.", default=0)
    requests_aborted: int = documented("Requests whose callback ran with an errno (ECANCELED on close or "
                                       "remove, the socket's error otherwise).", default=0)
    zerocopy_sends: int = documented("Send calls made with zero-copy (MSG_ZEROCOPY / SENDMSG_ZC).", default=0)
    zerocopy_copied: int = documented("Zero-copy sends the kernel reported it had to copy after all "
                                      "(SO_EE_CODE_ZEROCOPY_COPIED: always so to a local peer).", default=0)
    zerocopy_fallbacks: int = documented("Batches sent by copy because the kernel refused zero-copy (ENOBUFS).",
                                         default=0)
    syscalls: int = documented("System calls (or io_uring operations) made for this socket.", default=0)


#: The class of ``Sock.stats``: with the compiled core its C twin of :class:`SockStats` (the same
#: fields, C integers the hot path counts in without a Python call), else :class:`SockStats` itself.
SockStatsType: type = native.SockStats if native is not None else SockStats


@describe_fields
@dataclass(slots=True)
class GroupStats:
    """Per-group counters (``SockGroup.stats``)."""

    impls: list[str] = documented("The backends whose group impls the group holds, in the order first used.",
                                  default_factory=list)
    polls: int = documented("Calls of poll().", default=0)
    callbacks: int = documented("Read callbacks made.", default=0)


#: The class of ``SockGroup.stats``: with the compiled core its C twin of :class:`GroupStats`
#: (``polls`` and ``callbacks`` C integers the compiled poll counts in), else :class:`GroupStats`.
GroupStatsType: type = native.GroupStats if native is not None else GroupStats
