"""Backend options (:class:`ImplOpts`) and per-socket options (:class:`SockOpts`).

Defaults follow SPDK's ``spdk_sock_impl_opts`` and ``spdk_sock_opts``. A
backend with options of its own subclasses :class:`ImplOpts`. Every field is
checked on construction and on change, and a bad value raises an exception
that names the field and the value.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, TypeVar

MiB = 1 << 20

_T = TypeVar("_T", bound="_Checked")


class _Checked:
    """Type and range checks for a dataclass of ints and bools."""

    # field name -> (low, high) inclusive; high None = unbounded
    _ranges: dict[str, tuple[int, int | None]] = {}

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            self._check(f.name, getattr(self, f.name), f.type)

    def _check(self, name: str, value: Any, annotation: Any) -> None:
        kind = annotation if isinstance(annotation, type) else {"bool": bool, "int": int, "float": float}.get(str(annotation))
        if kind is bool:
            if not isinstance(value, bool):
                raise TypeError(f"{type(self).__name__}.{name} must be a bool, not {value!r}")
            return
        if kind is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{type(self).__name__}.{name} must be an int, not {value!r}")
        elif kind is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{type(self).__name__}.{name} must be a number, not {value!r}")
        lo, hi = self._ranges.get(name, (0, None))
        if value < lo or (hi is not None and value > hi):
            bound = f"{lo}..{hi}" if hi is not None else f">= {lo}"
            raise ValueError(f"{type(self).__name__}.{name}={value!r} is out of range ({bound})")

    def replace(self: _T, **fields: Any) -> _T:
        """A copy with ``fields`` changed; an unknown field raises ``TypeError``."""
        known = {f.name for f in dataclasses.fields(self)}  # type: ignore[arg-type]
        for name in fields:
            if name not in known:
                raise TypeError(f"{type(self).__name__} has no field {name!r} (fields: {', '.join(sorted(known))})")
        return dataclasses.replace(self, **fields)  # type: ignore[type-var]

    def copy(self: _T) -> _T:
        return dataclasses.replace(self)  # type: ignore[type-var]


@dataclass
class ImplOpts(_Checked):
    """Options of one backend; they apply to sockets created after a change."""

    recv_buf_size: int = 2 * MiB
    """SO_RCVBUF, and the capacity of the recv pipe."""
    send_buf_size: int = 2 * MiB
    """SO_SNDBUF."""
    enable_recv_pipe: bool = True
    """Buffer small reads in a per-socket ring so that many become one syscall."""
    enable_zerocopy_send_server: bool = True
    """MSG_ZEROCOPY on listening sockets and the sockets they accept."""
    enable_zerocopy_send_client: bool = False
    """MSG_ZEROCOPY on connected (client) sockets."""
    zerocopy_threshold: int = 0
    """A batch smaller than this many bytes is sent by copy even on a zero-copy socket."""
    enable_quickack: bool = False
    """Set TCP_QUICKACK on new sockets."""
    enable_placement_id: int = 0
    """0: none; 1: SO_INCOMING_NAPI_ID; 2: SO_INCOMING_CPU."""

    _ranges = {
        "recv_buf_size": (0, 1 << 31),
        "send_buf_size": (0, 1 << 31),
        "zerocopy_threshold": (0, 1 << 31),
        "enable_placement_id": (0, 2),
    }


@dataclass
class SockOpts(_Checked):
    """Options of one socket, given to :func:`netimpl.listen` / :func:`netimpl.connect`."""

    priority: int = 0
    """SO_PRIORITY; 0 leaves it unset."""
    zcopy: bool = True
    """Allow zero-copy send on this socket if the backend's options allow it."""
    reuseport: bool = False
    """SO_REUSEPORT on listening sockets."""
    ack_timeout: int = 0
    """TCP_USER_TIMEOUT in milliseconds; 0 leaves it unset."""

    _ranges = {"priority": (0, (1 << 31) - 1), "ack_timeout": (0, (1 << 31) - 1)}
