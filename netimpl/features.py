"""What the running kernel offers, for ``python -m netimpl info`` and for tests that skip.

Each probe makes the real system call once and says, when the answer is
no, why in words a user can act on.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
from functools import lru_cache

from ._kernel import SO_ZEROCOPY

__all__ = ["io_uring_reason", "netns_reason", "not_built", "zerocopy_reason"]

#: What to install when a compiled part is missing: the one sentence every command shows.
INSTALL_HINT = "reinstall netimpl where a C compiler and the Python headers are present (Debian: gcc python3-dev)"


def not_built(part: str, import_error: str) -> str:
    """Why ``part`` (a cffi-built module) cannot be used, and what to install."""
    return f"{part} is not built ({import_error}); {INSTALL_HINT}"


#: __NR_io_uring_setup on every architecture since 5.1 (asm-generic numbering).
NR_IO_URING_SETUP = 425


@lru_cache(maxsize=None)
def zerocopy_reason() -> str:
    """'' if TCP sockets accept SO_ZEROCOPY, else why not."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, SO_ZEROCOPY, 1)
        return ""
    except OSError as exc:
        return f"SO_ZEROCOPY refused: {exc.strerror} (kernel older than 4.14?)"


@lru_cache(maxsize=None)
def io_uring_reason() -> str:
    """'' if io_uring_setup works for this process, else why not."""
    try:
        with open("/proc/sys/kernel/io_uring_disabled") as f:
            disabled = int(f.read().strip() or 0)
    except (OSError, ValueError):
        disabled = 0
    if disabled == 2:
        return "io_uring is disabled system-wide (sysctl kernel.io_uring_disabled=2)"
    libc = ctypes.CDLL(None, use_errno=True)
    params = ctypes.create_string_buffer(120)  # struct io_uring_params, zeroed
    fd = libc.syscall(NR_IO_URING_SETUP, ctypes.c_uint(2), params)
    if fd >= 0:
        os.close(fd)
        return ""
    err = ctypes.get_errno()
    if err == errno.ENOSYS:
        return "the kernel has no io_uring (ENOSYS: older than 5.1, or compiled out)"
    if err == errno.EPERM:
        if disabled == 1:
            return ("io_uring is limited to the io_uring_group (sysctl kernel.io_uring_disabled=1) "
                    "and this process is not in it")
        return "io_uring_setup is not permitted (EPERM: a seccomp policy, e.g. a container's default, forbids it)"
    return f"io_uring_setup failed: {os.strerror(err)}"


@lru_cache(maxsize=None)
def netns_reason() -> str:
    """'' if this process may create network namespaces and veth pairs, else why not."""
    if not os.path.exists("/proc/self/ns/net"):
        return "the kernel has no network namespaces"
    if os.geteuid() != 0:
        return "creating network namespaces needs root (CAP_SYS_ADMIN)"
    try:
        import pyroute2  # noqa: F401
    except ImportError:
        return "pyroute2 is not installed"
    return ""
