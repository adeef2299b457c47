"""The placement-id map behind :func:`netimpl.optimal_group` (SPDK's sock map).

Sockets whose traffic arrives on the same NIC queue (NAPI id) or CPU share a
placement id; serving them from one group keeps that traffic on one core.
The map binds each id to the group that first served it and counts the
sockets there; the binding goes when the count falls to zero. A hint binds
a free id ahead of any socket.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .sockgroup import SockGroup


class PlacementMap:
    """placement id -> (group, refcount)."""

    def __init__(self) -> None:
        self._map: dict[int, list] = {}

    def __len__(self) -> int:
        return len(self._map)

    def insert(self, pid: int, group: "SockGroup") -> bool:
        """Count one socket of ``group`` under ``pid``; False if ``pid`` belongs to another group."""
        if pid < 0:
            return False
        entry = self._map.get(pid)
        if entry is None:
            self._map[pid] = [group, 1]
            return True
        if entry[0] is not group:
            return False
        entry[1] += 1
        return True

    def release(self, pid: int, group: "SockGroup") -> None:
        """Drop one socket of ``group`` from ``pid``."""
        entry = self._map.get(pid)
        if entry is None or entry[0] is not group:
            return
        entry[1] -= 1
        if entry[1] <= 0:
            del self._map[pid]

    def lookup(self, pid: int, hint: "SockGroup | None" = None) -> "SockGroup | None":
        """The group bound to ``pid``; an unbound id is bound to ``hint`` (refcount 0) if given."""
        if pid < 0:
            return None
        entry = self._map.get(pid)
        if entry is not None:
            return entry[0]
        if hint is not None:
            self._map[pid] = [hint, 0]
        return hint

    def forget_group(self, group: "SockGroup") -> None:
        for pid in [p for p, e in self._map.items() if e[0] is group]:
            del self._map[pid]


placement_map = PlacementMap()
