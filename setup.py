"""Only what pyproject.toml cannot say: the C parts, each built if it can be.

* ``netimpl._native``: the compiled request life cycle and posix hot path (a
  CPython extension); without it the pure-Python twin runs, and
  ``python -m netimpl info`` says why.
* the cffi-built io_uring core; without it backend ``uring`` reports itself
  unavailable and says why.

Without a C compiler or Python headers the install still succeeds.
"""

import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py


class optional_build_ext(build_ext):
    def run(self):
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - report, don't fail the install
            self._skip(exc)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            self._skip(exc)

    def _skip(self, exc):
        print(f"netimpl: a C part was not built ({exc}); without netimpl._native the Python core runs, "
              "without the io_uring core backend uring is unavailable", file=sys.stderr)


class runtime_build_py(build_py):
    """The wheel holds what runs: the cffi build scripts stay in the sdist (MANIFEST.in)."""

    BUILD_ONLY = frozenset({("netimpl.uring", "build_ring"), ("netimpl.bench", "build_loadgen"),
                            ("netimpl.bench", "build_floor")})

    def find_package_modules(self, package, package_dir):
        return [m for m in super().find_package_modules(package, package_dir) if m[:2] not in self.BUILD_ONLY]


setup(
    # netimpl.uring._bridge: the uring core's C that reads Python objects (declared arguments, C API).
    ext_modules=[Extension("netimpl.uring._bridge", ["netimpl/uring/bridge.c"],
                           depends=["netimpl/uring/ring.h", "netimpl/_native.h", "netimpl/copy.h"],
                           optional=True, extra_compile_args=["-O2", "-std=gnu11", "-Wall"]),
                 # netimpl._native: the compiled request life cycle, posix hot path and group poll.
                 Extension("netimpl._native", ["netimpl/_native.c"], depends=["netimpl/_native.h", "netimpl/copy.h"], optional=True,
                           extra_compile_args=["-O2", "-Wall", "-Wno-missing-field-initializers"])],
    cffi_modules=["netimpl/uring/build_ring.py:ffibuilder", "netimpl/bench/build_loadgen.py:ffibuilder",
                  "netimpl/bench/build_floor.py:ffibuilder"],
    cmdclass={"build_ext": optional_build_ext, "build_py": runtime_build_py},
)
