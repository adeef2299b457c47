"""Only what pyproject.toml cannot say: the cffi-built io_uring core, built if it can be.

Without a C compiler or Python headers the install still succeeds; backend
``uring`` then reports itself unavailable and says why.
"""

import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext


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
        print(f"netimpl: the io_uring core was not built ({exc}); backend uring will be unavailable",
              file=sys.stderr)


setup(
    cffi_modules=["netimpl/uring/build_ring.py:ffibuilder", "netimpl/bench/build_loadgen.py:ffibuilder",
                  "netimpl/bench/build_floor.py:ffibuilder"],
    cmdclass={"build_ext": optional_build_ext},
)
