"""What netimpl's command lines share: the program's name, the backend choice, one-line failures.

A command that cannot run says why in one line on stderr and exits non-zero,
never with a traceback: 2 for a bad command line (an unknown backend
included, as argparse does for its own errors), 1 when the command line is
right but this machine cannot run it (a backend unavailable, a compiled part
not built), 130 when interrupted (Ctrl-C).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

__all__ = ["CommandError", "backend", "prog_name", "run", "sentence"]

USAGE = 2
UNAVAILABLE = 1


class CommandError(Exception):
    """A failure to show as one line, with the exit status to end with."""

    def __init__(self, message: str, status: int = UNAVAILABLE) -> None:
        super().__init__(message)
        self.status = status


def prog_name(module: str) -> str:
    """``netimpl`` when run as the console script, else ``python -m <module>``."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if not name or name in ("-c", "-m", "__main__.py") or name.endswith(".py"):
        return f"python -m {module}"
    return name


def sentence(doc: str) -> str:
    """A command's description from its docstring's first paragraph, without the leading ``prog``: part."""
    text = doc.split("\n\n")[0].split(": ", 1)[-1].strip()
    return text[:1].upper() + text[1:]


def backend(name: str | None) -> str:
    """The backend ``name`` (or the default one), checked to be usable here."""
    import netimpl
    from netimpl.registry import get

    try:
        chosen = netimpl.default_impl() if name is None else name
        get(chosen)
    except (ValueError, TypeError) as exc:
        raise CommandError(str(exc), USAGE) from None
    except netimpl.NetImplError as exc:
        raise CommandError(str(exc), UNAVAILABLE) from None
    return chosen


def run(command: Callable[[], int], prog: str) -> int:
    """Run ``command``; a :class:`CommandError` becomes one line, a reader that left a quiet exit."""
    try:
        return command()
    except CommandError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        print(f"\n{prog}: interrupted", file=sys.stderr)
        return 130  # as a shell reports SIGINT
    except BrokenPipeError:  # e.g. `netimpl info | head -1`: the reader left
        # Point stdout at /dev/null so that the interpreter's last flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
