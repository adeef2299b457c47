"""Command line: ``netimpl {info,demo,bench}``, also run as ``python -m netimpl``.

``netimpl COMMAND --help`` shows a command's options. Exit status: 0 done;
1 the command cannot run here (a backend unavailable, a compiled part not
built); 2 a bad command line (an unknown backend included); 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys

import netimpl

from . import _cli, accel, features

COMMANDS = {
    "info": "the backends (priority, availability, why not) and what the kernel offers",
    "demo": "an echo round trip and a 1 GiB transfer beside plain sockets",
    "bench": "every backend beside asyncio, uvloop and plain sockets, every workload (about 7 minutes)",
}


def info() -> int:
    """Print the backend table and the kernel's features; fails on a bad ``NETIMPL_IMPL``."""
    default = _cli.backend(None)
    rows = [("backend", "priority", "available", "default", "reason")]
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
    try:
        uring = netimpl.registry.get("uring")
    except (netimpl.NetImplError, ValueError):
        uring = None
    feats = getattr(uring, "features", None)
    if feats:
        print()
        print("uring features (each falls back on its own):")
        for name, reason in feats.items():
            print(f"  {name:16s} {'in use' if not reason else 'no: ' + reason}")
    print()
    from .uring import group as uring_group

    core = "compiled (netimpl._native)" if accel.native is not None else "Python: " + accel.reason
    loop = "compiled (netimpl.uring._bridge)" if uring_group._compiled else "Python"
    print(f"core: {core}; uring group loop: {loop}")
    return 0


def _info_main(argv: list[str], prog: str) -> int:
    argparse.ArgumentParser(prog=prog, description=_cli.sentence(COMMANDS["info"] + ".")).parse_args(argv)
    return info()


def _parser(prog: str) -> argparse.ArgumentParser:
    commands = "\n".join(f"  {name:6s} {text}" for name, text in COMMANDS.items())
    p = argparse.ArgumentParser(
        prog=prog, description="netimpl: an SPDK-style pluggable socket layer for storage targets.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"commands:\n{commands}\n\n'{prog} COMMAND --help' shows a command's options.\n"
               "Exit status: 0 done; 1 cannot run here (a backend unavailable, a compiled part not built);\n"
               "2 bad command line; 130 interrupted.")
    p.add_argument("command", choices=list(COMMANDS), metavar="COMMAND", help=", ".join(COMMANDS))
    return p


def _dispatch(argv: list[str], prog: str) -> int:
    if not argv or argv[0] not in COMMANDS:
        _parser(prog).parse_args(argv[:1])  # --help, or a usage error naming the bad command
        return 2  # not reached: parse_args exits
    command, rest = argv[0], argv[1:]
    sub = f"{prog} {command}"
    return _cli.run(lambda: _command(command, rest, sub), sub)


def _command(command: str, rest: list[str], prog: str) -> int:
    if command == "info":
        return _info_main(rest, prog)
    if command == "bench":
        from . import bench

        return bench.main(rest, prog=prog)
    from . import demo

    def preamble() -> None:
        info()
        print()

    return demo.main(rest, prog=prog, preamble=preamble)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """The console script ``netimpl`` and ``python -m netimpl``: the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    prog = prog or _cli.prog_name("netimpl")
    return _cli.run(lambda: _dispatch(argv, prog), prog)


if __name__ == "__main__":
    sys.exit(main(prog="python -m netimpl"))
