"""cffi build script for the io_uring core (API mode). Run at install time; never imported at run time."""

from __future__ import annotations

from pathlib import Path

from cffi import FFI

_here = Path(__file__).parent

ffibuilder = FFI()
ffibuilder.cdef((_here / "ring.cdef").read_text())
ffibuilder.set_source(
    "netimpl.uring._ring",
    (_here / "ring.c").read_text(),
    include_dirs=[str(_here)],  # ring.h, shared with bridge.c
    depends=[str(_here / "ring.h"), str(_here.parent / "copy.h")],
    extra_compile_args=["-O2", "-std=gnu11", "-Wall"],
    py_limited_api=False,  # the module's file name as before, so a rebuild replaces it
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
