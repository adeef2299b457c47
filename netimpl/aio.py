"""Driving a :class:`netimpl.SockGroup` from a running asyncio event loop (asyncio's own or uvloop).

Facts that shape it:

* :meth:`SockGroup.fileno` is one fd that polls readable exactly while the
  group has work: a kernel event for any of its backends, or work of poll's
  own (recv-pipe data, a resumed socket, submissions prepared for a ring).
  So the loop watches it with ``add_reader`` and, on each wake, runs one
  ``poll(timeout=0)`` in its own thread, between other tasks: read and
  request callbacks run there, and an idle group costs nothing.
* Some work arrives with no kernel event: a coroutine queues a request, or
  resumes a paused socket. The group then makes its fd readable itself
  (write space armed for the request, prepared submissions handed to the
  ring, its own eventfd set), so the next loop iteration polls.
* With more ready sockets than ``max_events``, :func:`run` yields to the
  loop once (``sleep(0)``) and polls again, so other tasks are not starved
  and neither are the sockets (the pending-recv list rotates).
* The group's thread rules hold: a uring group belongs to the thread that
  first polls it, here the loop's thread.
"""

from __future__ import annotations

import asyncio
from typing import Any, Iterable, NoReturn

from .group import SockGroup
from .request import Request
from .sock import Sock

__all__ = ["run", "send"]


async def run(group: SockGroup, *, max_events: int = 32) -> NoReturn:
    """Serve ``group`` from the running event loop until the task is cancelled.

    Cancelling ends the task with ``CancelledError`` and leaves the group
    and its sockets intact: a later ``poll`` or ``run`` goes on serving
    them. An exception a callback lets out ends the task with it (as it
    would come out of ``poll``); what was not yet delivered is delivered by
    the next ``poll`` or ``run``. One driver at a time: ``RuntimeError`` if
    the group is already being run.
    """
    if not isinstance(group, SockGroup):
        raise TypeError(f"run takes a netimpl.SockGroup, not {group!r:.60}")
    if isinstance(max_events, bool) or not isinstance(max_events, int) or max_events <= 0:
        raise ValueError(f"max_events must be a positive int, not {max_events!r}")
    if group._driver is not None:
        raise RuntimeError(f"{group!r} is already driven by netimpl.aio.run")
    loop = asyncio.get_running_loop()
    fd = group.fileno()
    wake = asyncio.Event()
    loop.add_reader(fd, wake.set)
    group._driver = asyncio.current_task()
    try:
        while True:
            wake.clear()
            group.poll(max_events, 0.0)
            if group._busy:
                await asyncio.sleep(0)  # more at once: let the other tasks run first
            else:
                await wake.wait()
    finally:
        group._driver = None
        if not loop.is_closed():
            loop.remove_reader(fd)


async def send(sock: Sock, bufs: Iterable[Any]) -> int:
    """Queue ``bufs`` on ``sock`` as one :class:`~netimpl.Request` and wait for its callback.

    Returns the request's status: 0 once the kernel has every byte (and,
    with zero-copy, has released the buffers), else the errno (``ECANCELED``
    when the socket is closed or removed first). The buffers must not change
    until it returns. Needs :func:`run` (or some other poller) serving the
    socket's group; raises what :meth:`Sock.writev_async` raises.
    """
    done: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def completed(req: Request, status: int) -> None:
        if not done.done():
            done.set_result(status)

    sock.writev_async(Request(list(bufs), completed))
    return await done
