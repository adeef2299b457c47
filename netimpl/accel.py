"""Which core runs the per-request work: the compiled ``netimpl._native`` or the Python reference.

``netimpl._native`` (``netimpl/_native.c``) is built by ``setup.py`` when a C
compiler and the Python headers are there; without them the install still
succeeds and :mod:`netimpl._pycore`, the pure-Python twin of the same
contract, runs instead. ``NETIMPL_NATIVE=0`` in the environment forces the
Python twin (the test suite runs once that way too, so the two cannot
drift). :data:`reason` says why the compiled core is not in use, ``''``
when it is; ``python -m netimpl info`` prints it.
"""

from __future__ import annotations

import importlib.util
import os
from types import ModuleType

from . import _pycore
from .errors import callback_errors, ebadf, logger, wrong_thread

__all__ = ["native", "reason", "Request", "SockCore", "GroupCore", "GroupImplCore", "PosixGroupState", "ReadyList",
           "DirtyList", "completions", "flush_dirty", "ENV_VAR"]

ENV_VAR = "NETIMPL_NATIVE"

native: ModuleType | None = None
reason = ""
if os.environ.get(ENV_VAR, "1").strip() in ("0", "no", "off", "false"):
    reason = f"disabled by {ENV_VAR}={os.environ[ENV_VAR]}"
else:
    try:
        from . import _native as native  # type: ignore[attr-defined, no-redef]
    except ImportError as exc:
        if importlib.util.find_spec(f"{__package__}._native") is None:
            reason = "netimpl._native was not built (no C compiler or Python headers at install time)"
        else:
            reason = f"netimpl._native does not load: {exc}"

if native is not None:
    native._setup(callback_pending=callback_errors.pending, callback_reraise=callback_errors.reraise,
                  as_buffer=_pycore._as_buffer, ebadf=ebadf, logger=logger, recv_into=_pycore.SockCore.recv_into,
                  wrong_thread=wrong_thread)
    Request = native.Request
    completions = native.completions
    #: The state a poll reads, as C fields: the bases of SockGroup, GroupImpl and PosixGroupImpl.
    GroupCore = native.GroupCore
    GroupImplCore = native.GroupImplCore
    PosixGroupState = native.PosixGroupState
    #: A group's pending-recv list: an ordered set of sockets linked through them (SockGroup._ready).
    ReadyList = native.ReadyList
    #: A group impl's sockets with requests queued, linked the same way (GroupImpl._dirty).
    DirtyList = native.DirtyList
    #: ``GroupImpl.flush_dirty``, compiled: one C call flushes every dirty socket.
    flush_dirty = native.as_method(native.flush_dirty)

    class SockCore(native.SockCore, _pycore.SockCore):  # type: ignore[misc, name-defined]
        """The compiled core first; the reference supplies what it defers to (readv, slow paths)."""
else:
    Request = _pycore.Request  # type: ignore[misc]
    SockCore = _pycore.SockCore  # type: ignore[misc, assignment]
    completions = _pycore.completions
    GroupCore = _pycore.GroupCore  # type: ignore[misc]
    GroupImplCore = _pycore.GroupImplCore  # type: ignore[misc]
    PosixGroupState = _pycore.PosixGroupState  # type: ignore[misc]
    ReadyList = DirtyList = _pycore.SockList  # type: ignore[misc] (the same ordered set, as a dict)
    flush_dirty = _pycore.flush_dirty
