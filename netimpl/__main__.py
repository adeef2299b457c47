"""Command line: ``python -m netimpl {info,demo,bench}``."""

from __future__ import annotations

import argparse
import os
import sys

import netimpl

from . import features


def info() -> int:
    rows = [("backend", "priority", "available", "default", "reason")]
    try:
        default = netimpl.default_impl()
    except netimpl.NetImplError as exc:
        default = ""
        print(f"no default backend: {exc}")
    for i in netimpl.impls():
        rows.append((i.name, str(i.priority), "yes" if i.available else "no",
                     "*" if i.name == default else "", i.reason or "-"))
    widths = [max(len(r[c]) for r in rows) for c in range(4)]
    for r in rows:
        print("  ".join(r[c].ljust(widths[c]) for c in range(4)) + "  " + r[4])
    print()
    print("kernel:")
    for name, reason in (("SO_ZEROCOPY", features.zerocopy_reason()),
                         ("io_uring", features.io_uring_reason()),
                         ("netns", features.netns_reason())):
        print(f"  {name:12s} {'yes' if not reason else 'no: ' + reason}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python -m netimpl", description="netimpl: an SPDK-style socket layer")
    p.add_argument("command", choices=["info", "demo", "bench"], help="info: backends and kernel features; "
                   "demo: an echo round trip and a 1 GiB transfer beside plain sockets; "
                   "bench: every backend beside asyncio, uvloop and plain sockets (--help for options)")
    args, rest = p.parse_known_args(argv)
    if args.command == "info":
        if rest:
            p.error(f"info takes no arguments: {' '.join(rest)}")
        return info()
    if args.command == "bench":
        from . import bench

        return bench.main(rest)
    from . import demo

    info()
    print()
    return demo.main(rest)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # e.g. `python -m netimpl info | head`: the reader left
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
