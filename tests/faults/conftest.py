"""Fixtures of the fault suite: backends (and a mixed group), the impaired link, and the session's ledger.

Profiles: the short one (default, what CI runs) keeps the whole suite to
about a minute; ``NETIMPL_FAULTS=long`` moves more bytes and churns more
connections (10,000 per backend). At the end of the session a table says,
per backend, what was verified and what it cost.
"""

from __future__ import annotations

import gc
import os
import resource
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import pytest

import netimpl
from netimpl import features
from tests.conftest import need, open_fds

from .relay import FAULT_KINDS, Link, create_link, destroy_link

LONG = os.environ.get("NETIMPL_FAULTS", "short") == "long"


def scale(short: int, long: int) -> int:
    """``short`` in the default profile, ``long`` under NETIMPL_FAULTS=long."""
    return long if LONG else short


def rss() -> int:
    """This process's resident set, in bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def rss_of(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def cpu_of(pid: int) -> float:
    """User plus system CPU seconds of process ``pid``, its threads included."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Row:
    bytes_verified: int = 0
    churned: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    fds_before: int | None = None
    fds_after: int = 0
    rss_before: int | None = None
    rss_after: int = 0
    cases: int = 0


class Ledger:
    """What the session verified and injected, per backend ("mixed": a group holding both)."""

    def __init__(self) -> None:
        self.rows: dict[str, Row] = {}

    def row(self, backend: str) -> Row:
        return self.rows.setdefault(backend, Row())

    def verified(self, backend: str, n: int) -> None:
        self.row(backend).bytes_verified += n

    def churned(self, backend: str, n: int) -> None:
        self.row(backend).churned += n

    def fault(self, backend: str, kind: str, n: int = 1) -> None:
        faults = self.row(backend).faults
        faults[kind] = faults.get(kind, 0) + n

    def table(self) -> list[str]:
        head = (f"{'backend':8} {'cases':>5} {'MiB verified':>12} {'churned':>8} {'fds before/after':>16} "
                f"{'RSS MiB before/after':>20}  faults injected")
        lines = [head, "-" * len(head)]
        for name, r in sorted(self.rows.items()):
            total = sum(r.faults.values())
            detail = ", ".join(f"{k} {v}" for k, v in sorted(r.faults.items()))
            lines.append(f"{name:8} {r.cases:5} {r.bytes_verified / 2**20:12.1f} {r.churned:8} "
                         f"{'-' if r.fds_before is None else r.fds_before:>7} / {r.fds_after:<6} "
                         f"{(r.rss_before or 0) / 2**20:9.1f} / {r.rss_after / 2**20:<8.1f}  {total} ({detail})")
        return lines


LEDGER = Ledger()


def pytest_terminal_summary(terminalreporter) -> None:
    if LEDGER.rows:
        terminalreporter.section(f"fault suite ({'long' if LONG else 'short'} profile)")
        for line in LEDGER.table():
            terminalreporter.write_line(line)


@pytest.fixture
def ledger() -> Ledger:
    return LEDGER


# -- backends ----------------------------------------------------------------------------

def backend_params(mixed: bool = True, only: tuple[str, ...] = ()) -> list:
    """One param per registered backend (or those in ``only``), plus "mixed": one group holding every backend."""
    names = [i.name for i in netimpl.impls() if not only or i.name in only]
    return [pytest.param(n, id=n) for n in names] + ([pytest.param("mixed", id="mixed")] if mixed else [])


def backends_of(impl: str) -> list[str]:
    """The backends a case parametrized with ``impl`` uses."""
    if impl != "mixed":
        return [impl]
    infos = netimpl.impls()
    for info in infos:
        if not info.available:
            need(f"a mixed group needs backend {info.name}: {info.reason}")
    return [i.name for i in infos]


@pytest.fixture(scope="session", autouse=True)
def _process_wide_fds() -> None:
    """Open the fds a backend makes once per process (posix's orphanage epoll), so that no case books them."""
    from netimpl import registry

    for info in netimpl.impls():
        if info.available:
            getattr(registry.get(info.name), "orphanage", None)


@pytest.fixture(autouse=True)
def _account(request) -> Iterator[None]:
    """Book fds and RSS under the case's backend: the row's "before" is taken at its first case, its
    "after" is that plus every case's own change (so a leak shows however cases interleave)."""
    params = getattr(getattr(request.node, "callspec", None), "params", {})
    backend = params.get("impl")
    if not isinstance(backend, str):
        yield
        return
    if "link" in request.fixturenames:
        request.getfixturevalue("_session_link")        # the link's own fds are not the case's
    gc.collect()
    row = LEDGER.row(backend)
    fds, mem = open_fds(), rss()
    if row.fds_before is None:
        row.fds_before, row.rss_before, row.fds_after, row.rss_after = fds, mem, fds, mem
    yield
    gc.collect()
    row.cases += 1
    row.fds_after += open_fds() - fds
    row.rss_after += rss() - mem


# -- the impaired link ------------------------------------------------------------------

_LINK: list[Link] = []


@pytest.fixture(scope="session")
def _session_link() -> Iterator[list[Link]]:
    """The link, made at first use; remade if its relay died in an earlier case."""
    need(features.netns_reason())
    if not _LINK:
        _LINK.append(create_link())
    try:
        yield _LINK
    finally:
        while _LINK:
            destroy_link(_LINK.pop())


@pytest.fixture
def link(_session_link, request) -> Iterator[Link]:
    """The impaired link, clean at the start of each case; what the relay injected is booked to its backend."""
    if not _session_link[0].alive():
        destroy_link(_session_link.pop())
        _session_link.append(create_link())
    lk = _session_link[0]
    lk.impair()
    before = asdict(lk.totals)
    yield lk
    lk.impair()
    backend = getattr(getattr(request.node, "callspec", None), "params", {}).get("impl", "?")
    for kind in FAULT_KINDS:
        n = getattr(lk.totals, kind) - before[kind]
        if n and kind != "delayed":
            LEDGER.fault(backend, f"link {kind}", n)
    assert lk.totals.oversize == before["oversize"], "frames over the MTU reached the relay: an offload is on"
