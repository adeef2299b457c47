"""The registry of backends: priorities, lazy probes, the default choice."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

from .errors import NetImplError, logger
from .impl import NetImpl
from .options import ImplOpts, describe_fields, documented

__all__ = ["ImplInfo", "register", "impls", "get", "default_impl", "set_default_impl"]

ENV_VAR = "NETIMPL_IMPL"


@describe_fields
@dataclass(frozen=True)
class ImplInfo:
    """What :func:`netimpl.impls` says of one backend."""

    name: str = documented("The backend's name, as given to impl= and NETIMPL_IMPL.")
    priority: int = documented("Its rank: the available backend of highest priority is the default.")
    available: bool = documented("Whether its probe found what it needs here (run once, at first use).")
    reason: str = documented("Why it is unavailable, in words a user can act on; '' if available.")


class _Entry:
    __slots__ = ("impl", "priority", "reason")

    def __init__(self, impl: NetImpl, priority: int) -> None:
        self.impl = impl
        self.priority = priority
        self.reason: str | None = None  # None: not probed yet


_entries: dict[str, _Entry] = {}
_default: str | None = None
_lock = threading.Lock()


def register(impl: NetImpl, priority: int) -> None:
    """Add a backend instance with a priority (higher wins). Names are unique."""
    if not isinstance(impl, NetImpl):
        raise TypeError(f"register takes a netimpl.impl.NetImpl instance, not {impl!r}")
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise TypeError(f"priority must be an int, not {priority!r}")
    name = getattr(impl, "name", None)
    if not isinstance(name, str) or not name:
        raise ValueError(f"backend {impl!r} has no name")
    with _lock:
        if name in _entries:
            raise ValueError(f"a backend named {name!r} is already registered")
        _entries[name] = _Entry(impl, priority)


def _reason(entry: _Entry) -> str:
    if entry.reason is None:
        try:
            reason = entry.impl.probe()
        except Exception as exc:  # a probe must not raise; say what it did
            reason = f"probe failed: {exc!r}"
        entry.reason = reason or ""
        if entry.reason:
            logger.debug("backend %s unavailable: %s", entry.impl.name, entry.reason)
    return entry.reason


def _sorted() -> list[_Entry]:
    return sorted(_entries.values(), key=lambda e: -e.priority)


def impls() -> list[ImplInfo]:
    """Every registered backend, highest priority first."""
    out = []
    for e in _sorted():
        reason = _reason(e)
        out.append(ImplInfo(e.impl.name, e.priority, not reason, reason))
    return out


def _lookup(name: object) -> _Entry:
    if not isinstance(name, str):
        raise TypeError(f"backend name must be a str, not {name!r}")
    try:
        return _entries[name]
    except KeyError:
        known = ", ".join(sorted(_entries)) or "none"
        raise ValueError(f"unknown backend {name!r} (registered: {known})") from None


def get(name: str | None) -> NetImpl:
    """The backend called ``name`` (or the default), checked to be available."""
    entry = _lookup(default_impl() if name is None else name)
    reason = _reason(entry)
    if reason:
        raise NetImplError(f"backend {entry.impl.name!r} is unavailable: {reason}")
    return entry.impl


def default_impl() -> str:
    """``NETIMPL_IMPL`` if set, else :func:`set_default_impl`'s choice, else the best available."""
    env = os.environ.get(ENV_VAR)
    if env:
        try:
            entry = _lookup(env)
        except ValueError as exc:
            raise ValueError(f"{ENV_VAR}={env}: {exc}") from None
        reason = _reason(entry)
        if reason:
            raise NetImplError(f"{ENV_VAR}={env}: backend {env!r} is unavailable: {reason}")
        return env
    if _default is not None:
        return _default
    for e in _sorted():
        if not _reason(e):
            return e.impl.name
    raise NetImplError("no netimpl backend is available: " +
                       "; ".join(f"{e.impl.name}: {_reason(e)}" for e in _sorted()))


def set_default_impl(name: str | None) -> None:
    """Use ``name`` when no backend is named; ``None`` goes back to the best available."""
    global _default
    if name is None:
        _default = None
        return
    entry = _lookup(name)
    reason = _reason(entry)
    if reason:
        raise NetImplError(f"backend {name!r} is unavailable: {reason}")
    _default = name


def get_impl_opts(name: str) -> ImplOpts:
    """A copy of backend ``name``'s options."""
    return _lookup(name).impl.get_opts()


def set_impl_opts(name: str, opts: ImplOpts | None = None, **fields: object) -> None:
    """Replace backend ``name``'s options with ``opts``, then change ``fields``."""
    impl = _lookup(name).impl
    if opts is None:
        new = impl.get_opts()
    else:
        if not isinstance(opts, impl.opts_type):
            raise TypeError(f"backend {name!r} takes {impl.opts_type.__name__} options, not {opts!r}")
        new = opts.copy()
        new.__post_init__()  # re-validate: a dataclass can be changed after construction
    if fields:
        new = new.replace(**fields)
    impl.set_opts(new)
