"""Backend options (:class:`ImplOpts`) and per-socket options (:class:`SockOpts`).

Defaults follow SPDK's ``spdk_sock_impl_opts`` and ``spdk_sock_opts``. A
backend with options of its own subclasses :class:`ImplOpts`. Every field is
checked on construction and on change, and a bad value raises an exception
that names the field and the value.
"""

from __future__ import annotations

import dataclasses
from dataclasses import MISSING, dataclass
from typing import Any, TypeVar

MiB = 1 << 20

_T = TypeVar("_T", bound="_Checked")
_C = TypeVar("_C", bound=type)


def documented(doc: str, *, default: Any = MISSING, default_factory: Any = MISSING) -> Any:
    """A dataclass field whose description :func:`describe_fields` shows in ``help()``."""
    return dataclasses.field(default=default, default_factory=default_factory, metadata={"doc": doc})


def _shown(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and value >= MiB and value % MiB == 0:
        return f"{value // MiB} MiB"
    return repr(value)


def describe_fields(cls: _C) -> _C:
    """Append a "Fields" list (name, type, default, description) to a dataclass's docstring.

    Strings placed after attributes are invisible to ``help()``; the field
    metadata written by :func:`documented` is not.
    """
    lines = []
    for f in dataclasses.fields(cls):
        type_name = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        if f.default is not MISSING:
            default = f", default {_shown(f.default)}"
        elif f.default_factory is not MISSING:
            default = f", default {_shown(f.default_factory())}"
        else:
            default = ""
        lines.append(f"    {f.name} ({type_name}{default}): {f.metadata.get('doc', '')}")
    cls.__doc__ = (cls.__doc__ or cls.__name__).rstrip() + "\n\nFields:\n\n" + "\n".join(lines) + "\n"
    return cls


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
        """A plain copy."""
        return dataclasses.replace(self)  # type: ignore[type-var]


@describe_fields
@dataclass
class ImplOpts(_Checked):
    """Options of one backend; they apply to sockets created after a change."""

    recv_buf_size: int = documented("SO_RCVBUF, and the capacity of the recv pipe (bytes).", default=2 * MiB)
    send_buf_size: int = documented("SO_SNDBUF (bytes).", default=2 * MiB)
    enable_recv_pipe: bool = documented("Buffer reads in a per-socket ring, so that many small reads cost one "
                                        "system call.", default=True)
    enable_zerocopy_send_server: bool = documented("Zero-copy send on listening sockets and the sockets they "
                                                   "accept (never to a loopback address).", default=True)
    enable_zerocopy_send_client: bool = documented("Zero-copy send on connected (client) sockets.", default=False)
    zerocopy_threshold: int = documented("A batch smaller than this many bytes is sent by copy even on a "
                                         "zero-copy socket; 0 sends every batch zero-copy.", default=0)
    enable_quickack: bool = documented("Set TCP_QUICKACK on new sockets.", default=False)
    enable_placement_id: int = documented("What Sock.placement_id reports: 0 nothing (-1); 1 the NAPI id "
                                          "(SO_INCOMING_NAPI_ID); 2 the CPU (SO_INCOMING_CPU).", default=0)

    _ranges = {
        "recv_buf_size": (0, 1 << 31),
        "send_buf_size": (0, 1 << 31),
        "zerocopy_threshold": (0, 1 << 31),
        "enable_placement_id": (0, 2),
    }


@describe_fields
@dataclass
class SockOpts(_Checked):
    """Options of one socket, given to :func:`netimpl.listen` / :func:`netimpl.connect`."""

    priority: int = documented("SO_PRIORITY; 0 leaves it unset.", default=0)
    zcopy: bool = documented("Allow zero-copy send on this socket where the backend's options allow it.",
                             default=True)
    reuseport: bool = documented("SO_REUSEPORT on listening sockets.", default=False)
    ack_timeout: int = documented("TCP_USER_TIMEOUT in milliseconds; 0 leaves it unset.", default=0)

    _ranges = {"priority": (0, (1 << 31) - 1), "ack_timeout": (0, (1 << 31) - 1)}
