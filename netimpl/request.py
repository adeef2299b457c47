"""Asynchronous write requests.

A :class:`Request` goes through SPDK's life cycle: *queued* on its socket by
``writev_async``, *pending* once every byte of it has been handed to the
kernel (or once it has been aborted), and *completed* when its callback has
run. A pending request may still have zero-copy sends that the kernel has
not released (``_zc_wait`` > 0); it completes only when that count is zero,
and requests on one socket complete in the order they were queued.

The class is the compiled ``netimpl._native.Request`` when it is built, else
the pure-Python reference in :mod:`netimpl._pycore`; both keep one contract
(see :mod:`netimpl.accel`).
"""

from __future__ import annotations

from ._pycore import FREE, PENDING, QUEUED, RequestCallback
from .accel import Request

__all__ = ["Request", "RequestCallback", "FREE", "QUEUED", "PENDING"]
