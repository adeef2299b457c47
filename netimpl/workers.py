"""Serving across cores: N worker processes, each with its own group, sharing one listening port.

Facts that shape it:

* ``SO_REUSEPORT`` lets every worker bind and listen on the same port; the
  kernel spreads new connections over the listeners by a hash of the
  4-tuple, and each worker accepts from its own. There is no acceptor to
  become the bottleneck and no extra hop per connection, as one listener
  handing fds to workers over a Unix socket (``SCM_RIGHTS``) would have, and
  no thundering herd: a connection wakes one worker.
* The parent makes every worker's listener before it forks, and keeps
  them open: a worker serves the listener of its index, and when it dies
  that listener, with every connection waiting in its backlog, lives on in
  the parent for the replacement to accept. Nothing queued is reset, and
  the port never has a listener whose close is still to come: a listener
  an io_uring request holds is closed by the kernel's ring teardown, which
  runs after the dead process is reaped, so a listener made by the worker
  itself would take (and then reset) new connections for a while after
  its replacement was started. ``port=0`` picks one free port for all.
* Workers are forked, so whatever the parent mapped shared before
  (``MAP_SHARED`` memory, an NBD memory export) is one memory for all of
  them; what must be a worker's own (its group, a uring ring, files it
  opens) it makes itself, in ``target``.
* Placement (``placement=True``): each worker is pinned to one CPU and sets
  ``SO_INCOMING_CPU`` on its listener to it; the kernel then prefers, for a
  connection whose packets are handled on CPU *c*, the listener of CPU *c*,
  so a connection is served on the core its traffic arrives on. On loopback
  the traffic arrives on the client's CPU, so a client pinned to one CPU
  sends every connection to one worker: placement is for multi-queue NICs
  with IRQs spread over the cores, and is off by default.
* A worker never outlives the pool: it asks the kernel for SIGTERM when its
  parent dies (``PR_SET_PDEATHSIG``), so a parent killed with SIGKILL (which
  it cannot catch) takes its workers with it instead of leaving them serving
  the port forever.
* A worker that dies is reported and replaced (at most ``MAX_RESTARTS`` in
  ``RESTART_WINDOW`` seconds, then the pool stops: a worker that dies at once
  would otherwise fork forever). SIGTERM or SIGINT to the parent stops every
  worker (SIGTERM, then SIGKILL after ``STOP_WAIT`` seconds).
"""

from __future__ import annotations

import errno
import os
import select
import signal
import socket
import sys
import time
from typing import Callable

from . import listen
from ._kernel import SO_INCOMING_CPU
from .addr import check_host_port
from .errors import logger
from .options import SockOpts
from .sock import Sock

__all__ = ["WorkerPool"]

#: Restarts allowed in RESTART_WINDOW seconds before the pool gives up.
MAX_RESTARTS = 10
RESTART_WINDOW = 10.0
#: Seconds a stopping worker gets between SIGTERM and SIGKILL.
STOP_WAIT = 10.0

WorkerTarget = Callable[[Sock, int], object]


class WorkerPool:
    """``workers`` processes, each calling ``target(listener, index)`` with its own listener on one port.

    ``target`` runs in the worker until it returns (the worker then exits
    0) or SIGTERM, which the worker turns into ``SystemExit(0)``: a plain
    ``while True: group.poll(...)`` loop is a fine target. ``impl`` and
    ``opts`` are as for :func:`netimpl.listen` (``reuseport`` is set).
    Use :meth:`start`, then :meth:`wait` (supervise until stopped) or
    :meth:`stop`; or :meth:`serve` for both, as a ``main`` would.
    """

    def __init__(self, workers: int, target: WorkerTarget, host: str = "127.0.0.1", port: int = 0, *,
                 impl: str | None = None, opts: SockOpts | None = None, placement: bool = False) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= 1024:
            raise ValueError(f"workers must be an int from 1 to 1024, not {workers!r}")
        if not callable(target):
            raise TypeError(f"target must be callable, not {target!r:.60}")
        if opts is not None and not isinstance(opts, SockOpts):
            raise TypeError(f"opts must be a netimpl.SockOpts, not {opts!r:.60}")
        self.host, port = check_host_port(host, port)
        self.workers = workers
        self.target = target
        self.impl = impl
        self.opts = (opts or SockOpts()).copy()
        self.opts.reuseport = True
        self.placement = placement
        self.pids: dict[int, int] = {}      # pid -> worker index
        self._parent = os.getpid()
        self.restarts: list[float] = []
        self._stopping = False
        #: worker index -> its listener; the parent's copies, open until the pool is closed
        self._listeners: list[Sock] = []
        try:
            for _ in range(workers):
                self._listeners.append(listen(self.host, port, impl=impl, opts=self.opts))
                port = self._listeners[0].getaddr()[1]
        except BaseException:
            self.close()
            raise
        self.port: int = port

    def __repr__(self) -> str:
        return f"<WorkerPool {self.host}:{self.port} workers={self.workers} running={len(self.pids)}>"

    def close(self) -> None:
        """Close the parent's listeners: the port is released once the workers have ended too. Idempotent.

        :meth:`wait` and :meth:`stop` close them; a pool made but never
        started needs this (or ``with``).
        """
        while self._listeners:
            self._listeners.pop().close()

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pids:
            self.stop()
        self.close()

    # -- the parent ------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> None:
        """Fork every worker; return once each is listening (``TimeoutError`` after ``timeout`` s)."""
        r, w = os.pipe2(os.O_CLOEXEC)
        try:
            for index in range(self.workers):
                self._spawn(index, w)
            os.close(w)
            w = -1
            deadline = time.monotonic() + timeout
            ready = 0
            while ready < self.workers:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([r], [], [], left)[0]:
                    self.stop()
                    raise TimeoutError(f"{self.workers - ready} of {self.workers} workers were not listening "
                                       f"after {timeout:g} s")
                got = os.read(r, self.workers)
                if not got:  # every worker has the pipe closed: some died before listening
                    self.stop()
                    raise RuntimeError(f"{self.workers - ready} workers ended before listening (see the log)")
                ready += len(got)
        finally:
            os.close(r)
            if w >= 0:
                os.close(w)

    def _spawn(self, index: int, ready_fd: int = -1) -> None:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child, which never returns here
            code = 1
            try:
                code = self._worker(index, ready_fd)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 0
            except BaseException:  # noqa: BLE001 - reported, then the child ends
                logger.exception("worker %d failed", index)
            finally:
                _child_exit(code)
        self.pids[pid] = index
        logger.info("worker %d started (pid %d)", index, pid)

    def wait(self) -> int:
        """Supervise until every worker has ended: replace the ones that die, stop on SIGTERM/SIGINT.

        Returns 0 when the pool was stopped by a signal or :meth:`stop` (or
        every worker returned 0), 1 when it gave up restarting workers.
        """
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        status = 0
        try:
            while self.pids:
                try:
                    pid, wstatus = os.waitpid(-1, 0)
                except InterruptedError:
                    continue
                except ChildProcessError:
                    break
                index = self.pids.pop(pid, None)
                if index is None:
                    continue
                code = os.waitstatus_to_exitcode(wstatus)
                if self._stopping:
                    continue
                if code == 0:
                    logger.warning("worker %d (pid %d) ended by itself (exit status 0); not replaced", index, pid)
                    continue
                how = f"signal {-code}" if code < 0 else f"exit status {code}"
                now = time.monotonic()
                self.restarts = [t for t in self.restarts if now - t < RESTART_WINDOW] + [now]
                if len(self.restarts) > MAX_RESTARTS:
                    logger.error("worker %d (pid %d) died (%s); %d restarts in %.0f s: stopping the pool",
                                 index, pid, how, MAX_RESTARTS, RESTART_WINDOW)
                    status = 1
                    self.stop()
                    break
                logger.error("worker %d (pid %d) died (%s); starting a new one", index, pid, how)
                self._spawn(index)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.close()
        return status

    def serve(self) -> int:
        """:meth:`start` then :meth:`wait`."""
        self.start()
        return self.wait()

    def _on_signal(self, signum: int, frame: object) -> None:
        self._stopping = True
        self._signal_all(signal.SIGTERM)

    def _signal_all(self, sig: int) -> None:
        for pid in list(self.pids):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def stop(self) -> None:
        """Stop every worker (SIGTERM, and SIGKILL for any still running after ``STOP_WAIT`` seconds),
        then close the listeners."""
        self._stopping = True
        self._signal_all(signal.SIGTERM)
        deadline = time.monotonic() + STOP_WAIT
        while self.pids:
            for pid in list(self.pids):
                try:
                    done, _ = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    done = pid
                if done:
                    self.pids.pop(pid, None)
            if not self.pids:
                break
            if time.monotonic() > deadline:
                logger.warning("%d workers did not stop in %.0f s; killing them", len(self.pids), STOP_WAIT)
                self._signal_all(signal.SIGKILL)
                deadline = float("inf")
            time.sleep(0.01)
        self.close()

    # -- a worker --------------------------------------------------------------

    def _worker(self, index: int, ready_fd: int) -> int:  # pragma: no cover - runs in the child
        listener = self._listeners[index]
        for other in self._listeners:
            if other is not listener:
                other.close()  # this process's copy; the parent's stays open
        self._listeners = [listener]
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; a terminal's ^C reaches it too
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
        _die_with_parent(self._parent)
        if self.placement:
            self._place(index, listener)
        if ready_fd >= 0:
            os.write(ready_fd, b"!")
            os.close(ready_fd)
        result = self.target(listener, index)
        return 0 if result is None else int(bool(result))

    def _place(self, index: int, listener: Sock) -> None:  # pragma: no cover - runs in the child
        cpus = sorted(os.sched_getaffinity(0))
        cpu = cpus[index % len(cpus)]
        os.sched_setaffinity(0, {cpu})
        s = socket.socket(fileno=os.dup(listener.fileno()))
        try:
            s.setsockopt(socket.SOL_SOCKET, SO_INCOMING_CPU, cpu)
        except OSError as exc:
            if exc.errno not in (errno.ENOPROTOOPT, errno.EINVAL):
                raise
            logger.warning("worker %d: SO_INCOMING_CPU refused (%s): no placement", index, exc)
        finally:
            s.close()


PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:  # pragma: no cover - runs in the child
    """SIGTERM this worker when the pool's process dies, however it dies (prctl(2) PR_SET_PDEATHSIG)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        logger.warning("PR_SET_PDEATHSIG failed (%s): this worker would outlive a killed pool",
                       os.strerror(ctypes.get_errno()))
    if os.getppid() != parent:  # the parent died before the request took effect
        raise SystemExit(0)


def _child_exit(code: int) -> None:  # pragma: no cover - runs in the child
    """End a worker without the parent's atexit handlers, but with netimpl's own: zero-copy
    sends of closed sockets are waited for, so no buffer is reused under the kernel."""
    try:
        from . import registry

        orphanage = getattr(registry.get("posix"), "_orphanage", None)
        if orphanage is not None:
            orphanage._at_exit()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def _exit_on_sigterm(signum: int, frame: object) -> None:  # pragma: no cover - runs in the child
    raise SystemExit(0)
