"""cffi build script for the bench's floor server, a plain C epoll server. Run at install time; never imported at run time."""

from __future__ import annotations

from pathlib import Path

from cffi import FFI

_here = Path(__file__).parent

ffibuilder = FFI()
ffibuilder.cdef((_here / "floor.cdef").read_text())
ffibuilder.set_source("netimpl.bench._floor", (_here / "floor.c").read_text(),
                      extra_compile_args=["-O2", "-std=gnu11", "-Wall"])

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
