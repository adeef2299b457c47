"""Counters of sockets and groups; each names its backend."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class SockStats:
    """Per-socket counters."""

    impl: str
    bytes_sent: int = 0
    bytes_received: int = 0
    requests_completed: int = 0
    requests_aborted: int = 0
    zerocopy_sends: int = 0
    """Send calls made with zero-copy (MSG_ZEROCOPY / SEND_ZC)."""
    zerocopy_copied: int = 0
    """Zero-copy sends the kernel reported it had to copy after all."""
    zerocopy_fallbacks: int = 0
    """Batches sent by copy because the kernel refused zero-copy (ENOBUFS)."""
    syscalls: int = 0


@dataclass(slots=True)
class GroupStats:
    """Per-group counters; ``impls`` lists the backends the group uses."""

    impls: list[str] = field(default_factory=list)
    polls: int = 0
    callbacks: int = 0
    """Read callbacks made."""
