"""Only what pyproject.toml cannot say: the cffi-built io_uring core, built if it can be.

Without a C compiler or Python headers the install still succeeds; backend
``uring`` then reports itself unavailable and says why.
"""

import sys

from setuptools import setup
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
        print(f"netimpl: the io_uring core was not built ({exc}); backend uring will be unavailable",
              file=sys.stderr)


class runtime_build_py(build_py):
    """The wheel holds what runs: the cffi build scripts stay in the sdist (MANIFEST.in)."""

    BUILD_ONLY = frozenset({("netimpl.uring", "build_ring"), ("netimpl.bench", "build_loadgen"),
                            ("netimpl.bench", "build_floor")})

    def find_package_modules(self, package, package_dir):
        return [m for m in super().find_package_modules(package, package_dir) if m[:2] not in self.BUILD_ONLY]


setup(
    cffi_modules=["netimpl/uring/build_ring.py:ffibuilder", "netimpl/bench/build_loadgen.py:ffibuilder",
                  "netimpl/bench/build_floor.py:ffibuilder"],
    cmdclass={"build_ext": optional_build_ext, "build_py": runtime_build_py},
)
