from __future__ import annotations

import os

import pytest

import netimpl


IN_CI = bool(os.environ.get("CI"))


def need(reason: str) -> None:
    """Skip with ``reason`` when a feature is missing here; in CI, which must provide it, fail."""
    if reason:
        if IN_CI:
            pytest.fail(f"CI must provide this: {reason}")
        pytest.skip(reason)


def available_impls() -> list:
    """One pytest param per registered backend; an unavailable one skips (fails in CI) with its probe's reason."""
    params = []
    for info in netimpl.impls():
        params.append(pytest.param(info.name, id=info.name))
    return params


@pytest.fixture(autouse=True)
def _backend_must_be_available(request):
    name = request.node.callspec.params.get("impl") if hasattr(request.node, "callspec") else None
    if isinstance(name, str):
        info = next((i for i in netimpl.impls() if i.name == name), None)
        if info is not None and not info.available:
            need(f"backend {name} unavailable: {info.reason}")


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
