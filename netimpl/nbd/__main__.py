"""``python -m netimpl.nbd``: serve memory and file exports over NBD until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import logging
import math
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
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    p.add_argument("--port", type=int, default=10809, help="TCP port (default 10809; 0 picks a free one)")
    p.add_argument("--impl", default=None, help="netimpl backend (default: the best available: "
                   "see python -m netimpl info)")
    p.add_argument("--zerocopy-threshold", type=_size_arg, default=DEFAULT_ZEROCOPY_THRESHOLD,
                   help="replies at least this large go zero-copy where it is in force (default 64K)")
    p.add_argument("--handshake-timeout", type=_seconds_arg, default=DEFAULT_HANDSHAKE_TIMEOUT, metavar="SECONDS",
                   help="drop a client that has not finished negotiating this long after it connected "
                        f"(default {DEFAULT_HANDSHAKE_TIMEOUT:g}; 0: no limit)")
    p.add_argument("--verbose", "-v", action="store_true", help="log every connection")
    return p


def open_exports(args: argparse.Namespace) -> dict[str, Store]:
    exports: dict[str, Store] = {}
    try:
        if args.size:
            exports[args.name] = MemoryStore(args.size, read_only=args.read_only)
        for name, path in args.export:
            if name in exports:
                raise ValueError(f"export name {name!r} is given twice")
            exports[name] = open_file_store(path, read_only=args.read_only, direct=args.direct)
        if not exports:
            raise ValueError("nothing to export: --size 0 and no --export")
    except BaseException:
        for store in exports.values():
            store.close()
        raise
    return exports


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        impl = args.impl or netimpl.default_impl()
        netimpl.set_impl_opts(impl, zerocopy_threshold=args.zerocopy_threshold)
        exports = open_exports(args)
    except (ValueError, TypeError, OSError, netimpl.NetImplError) as exc:
        print(f"netimpl.nbd: {exc}", file=sys.stderr)
        return 2
    try:
        try:
            server = NbdServer(exports, args.host, args.port, impl=impl,
                               handshake_timeout=args.handshake_timeout or None)
        except (ValueError, OSError) as exc:
            print(f"netimpl.nbd: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
            return 2
        stop = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda signum, _frame: stop.append(signum))
        host, port = server.address
        zc = {True: f"on for replies >= {args.zerocopy_threshold} bytes",
              None: f"on for replies >= {args.zerocopy_threshold} bytes, except to loopback clients",
              False: "off"}[server.zerocopy]
        print(f"netimpl.nbd: listening on {host}:{port}, backend {server.impl_name}, zero-copy {zc}", flush=True)
        for name, store in exports.items():
            print(f"  export {name!r}: {store.describe()}", flush=True)
        try:
            server.serve(lambda: bool(stop))
        finally:
            served, connections = server.requests, server.accepted
            server.close()
        signame = signal.Signals(stop[0]).name if stop else "stop"
        print(f"netimpl.nbd: {signame}: stopped after {connections} connections, {served} requests", flush=True)
        return 0
    finally:
        for store in exports.values():
            store.close()


if __name__ == "__main__":
    sys.exit(main())
