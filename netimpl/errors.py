"""Exceptions, errno helpers and the deferred-callback-error slot.

Failures of system calls surface as :class:`OSError` carrying the errno, the
way the :mod:`socket` module raises them. Failures of *queued* requests never
raise: they complete the request with the errno. An exception raised by a
user callback is held here until the library's state is consistent again and
then re-raised from the public call that ran the callback.
"""

from __future__ import annotations

import errno
import logging
import os

logger = logging.getLogger("netimpl")


class NetImplError(Exception):
    """A backend cannot be used (unavailable), or a backend misbehaved."""


def oserror(code: int, detail: str = "") -> OSError:
    """Build the ``OSError`` subclass Python uses for ``code``."""
    msg = os.strerror(code)
    if detail:
        msg = f"{msg}: {detail}"
    return OSError(code, msg)


def ebadf() -> OSError:
    return oserror(errno.EBADF, "socket is closed")


def wrong_thread(what: object, call: str) -> OSError:
    """The refusal of a call made from a thread that does not drive ``what``'s group."""
    return oserror(errno.EEXIST, f"{call} on {what!r} from a thread that does not poll its group: "
                                 "call it on the thread that polls the group (IORING_SETUP_SINGLE_ISSUER)")


class CallbackErrors:
    """Exceptions raised by user callbacks, waiting to be re-raised.

    Callbacks run deep inside flush and poll loops; raising there would leave
    queues half-updated. The loops record the exception here and go on; the
    outermost public call re-raises the first one (later ones are logged).
    """

    __slots__ = ("pending",)

    def __init__(self) -> None:
        self.pending: list[BaseException] = []

    def record(self, exc: BaseException) -> None:
        self.pending.append(exc)

    def reraise(self) -> None:
        if not self.pending:
            return
        first, *rest = self.pending
        self.pending.clear()
        for exc in rest:
            logger.error("callback raised while another error was pending", exc_info=exc)
        raise first


#: The one slot for the process: netimpl runs callbacks on the polling thread.
callback_errors = CallbackErrors()
