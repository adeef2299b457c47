"""cffi build script for the bench's floor servers: plain C servers on epoll (floor.c) and on netimpl's
io_uring ring code (floor_uring.c with uring/ring.c). Run at install time; never imported at run time."""

from __future__ import annotations

from pathlib import Path

from cffi import FFI

_here = Path(__file__).parent
_uring = _here.parent / "uring"

ffibuilder = FFI()
ffibuilder.cdef((_here / "floor.cdef").read_text())
ffibuilder.set_source("netimpl.bench._floor", (_here / "floor.c").read_text(),
                      sources=[str(_here / "floor_uring.c"), str(_uring / "ring.c")],
                      include_dirs=[str(_here), str(_uring)],  # floor.h, ring.h
                      depends=[str(_here / "floor.h"), str(_uring / "ring.h"), str(_here.parent / "copy.h")],
                      extra_compile_args=["-O2", "-std=gnu11", "-Wall"])

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
