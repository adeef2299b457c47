"""``python -m netimpl.nbd``: serve memory and file exports over NBD until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import math
import os
import signal
import sys

import netimpl

from .server import DEFAULT_HANDSHAKE_TIMEOUT, NbdServer
from .store import MemoryStore, Store, open_file_store, parse_size

DEFAULT_ZEROCOPY_THRESHOLD = 64 << 10


def _export_arg(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not path:
        raise argparse.ArgumentTypeError(f"--export {text!r}: expected NAME=FILE")
    return name, path


def _size_arg(text: str) -> int:
    try:
        size = parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if size < 0:
        raise argparse.ArgumentTypeError(f"size {text!r} is negative")
    return size


def _seconds_arg(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 <= seconds < math.inf:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds >= 0")
    return seconds


def _workers_arg(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--workers {text!r} is not a whole number") from None
    if not 1 <= n <= 1024:
        raise argparse.ArgumentTypeError(f"--workers {n} is outside 1..1024")
    return n


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m netimpl.nbd",
        description="An NBD server on netimpl: a memory export (name '' by default) and any number of "
                    "file exports, until SIGINT or SIGTERM.",
        epilog="Then, for instance: nbdinfo nbd://localhost:10809 ; "
               "qemu-img convert -O raw nbd://localhost:10809 disk.img")
    p.add_argument("--size", type=_size_arg, default=parse_size("1G"),
                   help="size of the memory export, e.g. 1G, 256M (default 1G; 0: no memory export)")
    p.add_argument("--name", default="", help="name of the memory export (default: '', the default export)")
    p.add_argument("--export", action="append", type=_export_arg, default=[], metavar="NAME=FILE",
                   help="also export FILE (a regular file or block device) as NAME; repeatable")
    p.add_argument("--direct", action="store_true", help="open file exports with O_DIRECT")
    p.add_argument("--read-only", "-r", action="store_true", help="every export refuses writes (EPERM)")
    p.add_argument("--host", default="0.0.0.0",
                   help="address to listen on (default 0.0.0.0: every interface). NBD has no authentication "
                        "here: anyone who can reach the port can read, and unless --read-only overwrite, the "
                        "exports; 127.0.0.1 serves this machine only")
    p.add_argument("--port", type=int, default=10809, help="TCP port (default 10809; 0 picks a free one)")
    p.add_argument("--unix", "-U", metavar="PATH",
                   help="listen on a Unix-domain socket at PATH instead of TCP (nbd+unix:///?socket=PATH); "
                        "a stale socket file is replaced, the path is removed at exit")
    p.add_argument("--impl", default=None, help="netimpl backend (default: the best available: "
                   "see python -m netimpl info)")
    p.add_argument("--zerocopy-threshold", type=_size_arg, default=DEFAULT_ZEROCOPY_THRESHOLD,
                   help="replies at least this large go zero-copy where it is in force (default 64K)")
    p.add_argument("--handshake-timeout", type=_seconds_arg, default=DEFAULT_HANDSHAKE_TIMEOUT, metavar="SECONDS",
                   help="drop a client that has not finished negotiating this long after it connected "
                        f"(default {DEFAULT_HANDSHAKE_TIMEOUT:g}; 0: no limit)")
    p.add_argument("--workers", type=_workers_arg, default=1, metavar="N",
                   help="serve from N processes, each with its own group, sharing the port (SO_REUSEPORT) and "
                        "the exports: memory exports are one shared memory, file exports are opened by each; "
                        "a worker that dies is replaced (default 1)")
    p.add_argument("--placement", action="store_true",
                   help="with --workers: pin each worker to a CPU and let the kernel hand it the connections "
                        "whose packets arrive on that CPU (SO_INCOMING_CPU; for multi-queue NICs)")
    p.add_argument("--verbose", "-v", action="store_true", help="log every connection")
    return p


def exposure_warning(host: str, read_only: bool) -> str:
    """What to tell the operator when the exports are open to other machines ('' for a loopback address)."""
    try:
        if ipaddress.ip_address(host.strip("[]")).is_loopback:
            return ""
    except ValueError:
        if host == "localhost":
            return ""
    where = "every interface" if host in ("0.0.0.0", "::", "[::]") else host
    access = "read" if read_only else "read and overwrite"
    return (f"netimpl.nbd: warning: listening on {where} with no authentication: anyone who can reach the port "
            f"can {access} the exports (--host 127.0.0.1 serves this machine only)")


def open_exports(args: argparse.Namespace, memory: bool = True, files: bool = True) -> dict[str, Store]:
    """The exports the arguments name: the memory export, the file exports, or both."""
    exports: dict[str, Store] = {}
    try:
        if args.size and memory:
            exports[args.name] = MemoryStore(args.size, read_only=args.read_only)
        names = {args.name} if args.size else set()
        for name, path in args.export:
            if name in names:
                raise ValueError(f"export name {name!r} is given twice")
            names.add(name)
            if files:
                exports[name] = open_file_store(path, read_only=args.read_only, direct=args.direct)
        if not names:
            raise ValueError("nothing to export: --size 0 and no --export")
    except BaseException:
        for store in exports.values():
            store.close()
        raise
    return exports


def _zerocopy_words(state: bool | None, threshold: int) -> str:
    return {True: f"on for replies >= {threshold} bytes",
            None: f"on for replies >= {threshold} bytes, except to loopback clients",
            False: "off"}[state]


def serve_workers(args: argparse.Namespace, impl: str, memory: dict[str, Store]) -> int:
    """``--workers N``: the memory export made here (one shared mapping), file exports opened by each worker."""
    from netimpl.workers import WorkerPool

    def worker(listener: netimpl.Sock, index: int) -> None:
        stop: list[int] = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, _frame: stop.append(signum))
        files = open_exports(args, memory=False)
        try:
            server = NbdServer({**memory, **files}, impl=impl, listener=listener,
                               handshake_timeout=args.handshake_timeout or None)
            try:
                server.serve(lambda: bool(stop))
            finally:
                logging.getLogger("netimpl.nbd").info("worker %d: stopped after %d connections, %d requests",
                                                      index, server.accepted, server.requests)
                server.close()
        finally:
            for store in files.values():
                store.close()

    try:
        pool = WorkerPool(args.workers, worker, args.host, args.port, impl=impl, placement=args.placement)
        pool.start()
    except (ValueError, OSError, TimeoutError, RuntimeError) as exc:
        print(f"netimpl.nbd: cannot start {args.workers} workers on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 2
    policy = getattr(netimpl.get_impl_opts(impl), "enable_zerocopy_send_server", False)
    zc = NbdServer.zerocopy_policy(args.host, policy)
    print(f"netimpl.nbd: listening on {args.host}:{pool.port}, backend {impl}, {args.workers} workers, "
          f"zero-copy {_zerocopy_words(zc, args.zerocopy_threshold)}", flush=True)
    for name, store in memory.items():
        print(f"  export {name!r}: {store.describe()}", flush=True)
    for name, path in args.export:
        print(f"  export {name!r}: file {path}, opened by each worker", flush=True)
    warning = exposure_warning(args.host, args.read_only)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    status = pool.wait()
    print(f"netimpl.nbd: stopped {args.workers} workers", flush=True)
    return status


#: The first fd systemd-style socket activation passes (SD_LISTEN_FDS_START).
LISTEN_FDS_START = 3


def _activation_fd() -> int | None:
    """fd 3 when this process was started by socket activation (LISTEN_PID is us, LISTEN_FDS >= 1),
    as by ``nbdinfo -- [ python -m netimpl.nbd ... ]``; the variables are then cleared for children."""
    try:
        ours = int(os.environ.get("LISTEN_PID", "")) == os.getpid() and int(os.environ.get("LISTEN_FDS", "")) >= 1
    except ValueError:
        return None
    if not ours:
        return None
    for var in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(var, None)
    return LISTEN_FDS_START


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        impl = args.impl or netimpl.default_impl()
        netimpl.set_impl_opts(impl, zerocopy_threshold=args.zerocopy_threshold)
        exports = open_exports(args, files=args.workers == 1)
    except (ValueError, TypeError, OSError, netimpl.NetImplError) as exc:
        print(f"netimpl.nbd: {exc}", file=sys.stderr)
        return 2
    activated = _activation_fd()
    if args.workers > 1:
        if args.unix or activated is not None:
            print("netimpl.nbd: --workers needs a TCP port (SO_REUSEPORT): not with --unix or socket activation",
                  file=sys.stderr)
            return 2
        try:
            return serve_workers(args, impl, exports)
        finally:
            for store in exports.values():
                store.close()
    try:
        where = (f"socket-activation fd {activated}" if activated is not None
                 else f"unix:{args.unix}" if args.unix else f"{args.host}:{args.port}")
        try:
            listener = (netimpl.listen_fd(activated, impl=impl) if activated is not None
                        else netimpl.listen_unix(args.unix, impl=impl) if args.unix else None)
            server = NbdServer(exports, args.host, args.port, impl=impl, listener=listener,
                               handshake_timeout=args.handshake_timeout or None)
        except (ValueError, TypeError, OSError) as exc:
            print(f"netimpl.nbd: cannot listen on {where}: {exc}", file=sys.stderr)
            return 2
        stop = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda signum, _frame: stop.append(signum))
        host, port = server.address
        zc = _zerocopy_words(server.zerocopy, args.zerocopy_threshold)
        where = f"{host}:{port}" if server.listener.is_ipv4() or server.listener.is_ipv6() else f"unix:{host}"
        # Socket-activated, stdout is the client's (nbdinfo -- [ ... ]): say it on stderr instead.
        out = sys.stderr if activated is not None else sys.stdout
        print(f"netimpl.nbd: listening on {where}, backend {server.impl_name}, zero-copy {zc}", file=out, flush=True)
        warning = exposure_warning(args.host, args.read_only) if not (args.unix or activated is not None) else ""
        if warning:
            print(warning, file=sys.stderr, flush=True)
        for name, store in exports.items():
            print(f"  export {name!r}: {store.describe()}", file=out, flush=True)
        try:
            server.serve(lambda: bool(stop))
        finally:
            served, connections = server.requests, server.accepted
            server.close()
        signame = signal.Signals(stop[0]).name if stop else "stop"
        print(f"netimpl.nbd: {signame}: stopped after {connections} connections, {served} requests", file=out,
              flush=True)
        return 0
    finally:
        for store in exports.values():
            store.close()


if __name__ == "__main__":
    sys.exit(main())
