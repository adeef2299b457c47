"""Creating kernel Unix-domain stream sockets (AF_UNIX), for local clients.

Facts that shape it:

* A path is at most 107 bytes (``sun_path`` is 108 with its NUL); a name
  that starts with a NUL byte is in Linux's abstract namespace and leaves
  nothing in the file system.
* A path left by a server that died makes ``bind`` fail with EADDRINUSE,
  although nothing listens there. ``listen_unix`` takes the place of such a
  stale socket (a connect to it is refused) and of nothing else: a live
  listener's path, or a file that is not a socket, is an error.
* There is no zero-copy on AF_UNIX (MSG_ZEROCOPY is TCP's and UDP's), no
  TCP option, and no placement id; the kernel's socket buffers apply.
* The listener removes its path when it is closed, if the path is still the
  socket it bound (same inode).
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from typing import Union

from .options import ImplOpts, SockOpts

__all__ = ["check_path", "create_unix_listener", "create_unix_connection", "MAX_PATH_BYTES"]

MAX_PATH_BYTES = 107
LISTEN_BACKLOG = 512
UnixPath = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]


def check_path(path: object) -> str | bytes:
    """``path`` as ``str`` or ``bytes``, checked; ``TypeError``/``ValueError`` naming it otherwise."""
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    if not isinstance(path, (str, bytes)):
        raise TypeError(f"a Unix socket path must be a str, bytes or path, not {path!r:.60}")
    raw = os.fsencode(path)
    if not raw:
        raise ValueError("a Unix socket path must not be empty")
    if len(raw) > MAX_PATH_BYTES:
        raise ValueError(f"Unix socket path {path!r:.80} is {len(raw)} bytes, over the kernel's {MAX_PATH_BYTES}")
    if b"\0" in raw[1:]:
        raise ValueError(f"Unix socket path {path!r:.80} has a NUL byte after its first")
    return path


def _set_bufs(s: socket.socket, impl_opts: ImplOpts) -> None:
    if impl_opts.recv_buf_size >= 4096:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, impl_opts.recv_buf_size)
    if impl_opts.send_buf_size >= 4096:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, impl_opts.send_buf_size)


def _take_stale(path: str | bytes) -> None:
    """Remove ``path`` if it is a socket nobody listens on; leave anything else for bind to refuse."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise FileExistsError(errno.EEXIST, f"{os.fsdecode(path)!r} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)  # stale: its server is gone
    except OSError:
        pass
    else:
        raise OSError(errno.EADDRINUSE, f"a server is listening on {os.fsdecode(path)!r}")
    finally:
        probe.close()


def create_unix_listener(path: str | bytes, impl_opts: ImplOpts, opts: SockOpts) -> tuple[socket.socket, int]:
    """A bound, listening, non-blocking AF_UNIX socket and the inode of its path (0: abstract)."""
    abstract = os.fsencode(path)[:1] == b"\0"
    if not abstract:
        _take_stale(path)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        _set_bufs(s, impl_opts)
        s.bind(path)
        s.listen(LISTEN_BACKLOG)
        s.setblocking(False)
        ino = 0 if abstract else os.stat(path).st_ino
    except BaseException:
        s.close()
        raise
    return s, ino


def create_unix_connection(path: str | bytes, impl_opts: ImplOpts, opts: SockOpts) -> socket.socket:
    """A connected, non-blocking AF_UNIX socket."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        _set_bufs(s, impl_opts)
        s.connect(path)
        s.setblocking(False)
    except BaseException:
        s.close()
        raise
    return s


def remove_path(path: str | bytes, ino: int) -> None:
    """Unlink a closed listener's path if it is still the socket it bound (ino 0: abstract, nothing to do)."""
    if not ino:
        return
    try:
        if os.stat(path).st_ino == ino:
            os.unlink(path)
    except OSError:
        pass
