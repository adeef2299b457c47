from __future__ import annotations

import os

import pytest

import netimpl


def available_impls() -> list:
    """One pytest param per registered backend; an unavailable one skips with its probe's reason."""
    params = []
    for info in netimpl.impls():
        marks = [] if info.available else [pytest.mark.skip(reason=f"backend {info.name} unavailable: {info.reason}")]
        params.append(pytest.param(info.name, id=info.name, marks=marks))
    return params


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture(autouse=True)
def _no_default_override():
    """Each test starts from the registry's own default choice."""
    netimpl.set_default_impl(None)
    yield
    netimpl.set_default_impl(None)


@pytest.fixture(autouse=True)
def _no_internal_errors(caplog):
    """Fail any test during which netimpl logged an ERROR: those are broken invariants."""
    caplog.set_level("WARNING", logger="netimpl")
    yield
    errors = [r.getMessage() for r in caplog.get_records("call") if r.name.startswith("netimpl") and r.levelname == "ERROR"]
    assert not errors, f"netimpl logged errors: {errors}"
