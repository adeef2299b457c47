"""The documentation is true to the code: every public name documented, every field visible to help()."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import pydoc
import re
from pathlib import Path

import pytest

import netimpl
import netimpl.aio
import netimpl.nbd
import netimpl.workers
from netimpl.__main__ import COMMANDS
from netimpl.__main__ import main as cli_main
from netimpl.nbd import __main__ as nbd_main


def option_and_stats_classes() -> list[type]:
    """Every public dataclass, and every registered backend's options class."""
    found = {getattr(netimpl, n) for n in netimpl.__all__ if dataclasses.is_dataclass(getattr(netimpl, n))}
    found |= {type(netimpl.get_impl_opts(i.name)) for i in netimpl.impls()}
    return sorted(found, key=lambda c: c.__qualname__)


def test_the_dataclasses_are_the_expected_ones():
    names = {c.__name__ for c in option_and_stats_classes()}
    assert {"ImplOpts", "SockOpts", "SockStats", "GroupStats", "ImplInfo", "UringOpts"} <= names


@pytest.mark.parametrize("cls", option_and_stats_classes(), ids=lambda c: c.__name__)
def test_help_shows_every_field_with_its_description(cls):
    text = pydoc.render_doc(cls, renderer=pydoc.plaintext)
    for f in dataclasses.fields(cls):
        doc = f.metadata.get("doc", "")
        assert doc, f"{cls.__name__}.{f.name} has no description (use netimpl.options.documented)"
        line = next((ln for ln in text.splitlines() if f" {f.name} (" in ln), None)
        assert line is not None and doc in line, (cls.__name__, f.name)


ROOT = Path(__file__).resolve().parent.parent
API = ROOT / "docs" / "api.md"

#: Public submodules beside the package's own names (imported on their own: ``import netimpl.aio``).
SUBMODULES = {"netimpl.aio": netimpl.aio, "netimpl.workers": netimpl.workers}


def api_text() -> str:
    return API.read_text()


def mentions(text: str, qualified: str) -> bool:
    """``qualified`` appears in a code span: `name`, `name(...)`, `name -> ...`, `name.attr`."""
    return re.search(r"`" + re.escape(qualified) + r"(?![A-Za-z0-9_])", text) is not None


def _own_members(cls: type) -> set[str]:
    names: set[str] = set()
    for klass in cls.__mro__:
        if not klass.__module__.startswith("netimpl"):
            continue
        names |= {n for n in vars(klass) if not n.startswith("_")}
        names |= {n for n in getattr(klass, "__annotations__", {}) if not n.startswith("_")}
    if dataclasses.is_dataclass(cls):
        names |= {f.name for f in dataclasses.fields(cls)}
    return names


def public_members() -> dict[str, set[str]]:
    """Class name -> its public member names, from the code: classes, real instances, backends' subclasses."""
    out = {n: _own_members(getattr(netimpl, n)) for n in netimpl.__all__ if isinstance(getattr(netimpl, n), type)}
    for i in netimpl.impls():
        opts = type(netimpl.get_impl_opts(i.name))
        if opts is not netimpl.ImplOpts:  # a backend's own options: what it adds to ImplOpts
            out.setdefault(opts.__name__, set()).update(_own_members(opts) - _own_members(netimpl.ImplOpts))
        if not i.available:
            continue
        with netimpl.listen("127.0.0.1", 0, impl=i.name) as lsock:
            out["Sock"] |= {n for n in vars(lsock) if not n.startswith("_")} | _own_members(type(lsock))
    with netimpl.SockGroup() as group:
        out["SockGroup"] |= {n for n in vars(group) if not n.startswith("_")}
    return out


def test_every_public_name_of_netimpl_is_documented():
    text = api_text()
    missing = [f"netimpl.{n}" for n in netimpl.__all__ if not (mentions(text, f"netimpl.{n}") or mentions(text, n))]
    for cls, members in public_members().items():
        missing += [f"{cls}.{m}" for m in sorted(members) if not mentions(text, f"{cls}.{m}")]
    assert not missing, f"not in docs/api.md: {', '.join(missing)}"


def test_what_the_reference_names_exists():
    text = api_text()
    known = public_members()
    known["NbdServer"] = _own_members(netimpl.nbd.NbdServer)
    known["Store"] = _own_members(netimpl.nbd.Store)
    pool = netimpl.workers.WorkerPool(1, lambda listener, index: None)
    try:  # a pool's attributes are set in __init__: read them off one (nothing forked before start)
        known["WorkerPool"] = _own_members(netimpl.workers.WorkerPool) | {n for n in vars(pool) if n[0] != "_"}
    finally:
        pool.stop()
    stale = []
    for cls, member in re.findall(r"`([A-Z][A-Za-z]+)\.([a-z_][a-z0-9_]*)", text):
        if cls in known and member not in known[cls]:
            stale.append(f"{cls}.{member}")
    for name in re.findall(r"`netimpl\.([a-z_]+)(?![.a-z_])", text):
        if not hasattr(netimpl, name):
            stale.append(f"netimpl.{name}")
    for module, name in re.findall(r"`(netimpl\.(?:aio|workers))\.([A-Za-z_]+)", text):
        if not hasattr(SUBMODULES[module], name):
            stale.append(f"{module}.{name}")
    assert not stale, f"docs/api.md names what the code does not have: {', '.join(sorted(set(stale)))}"


@pytest.mark.parametrize("module", list(SUBMODULES))
def test_every_public_name_of_the_submodules_is_documented(module):
    text = api_text()
    mod = SUBMODULES[module]
    missing = [f"{module}.{n}" for n in mod.__all__ if not mentions(text, f"{module}.{n}")]
    for n in mod.__all__:
        obj = getattr(mod, n)
        if isinstance(obj, type):
            missing += [f"{n}.{m}" for m in sorted(_own_members(obj)) if not mentions(text, f"{n}.{m}")]
    assert not missing, f"not in docs/api.md: {', '.join(missing)}"


def test_netimpl_nbd_entry_points_are_documented():
    text = api_text()
    missing = [f"netimpl.nbd.{n}" for n in netimpl.nbd.__all__ if not mentions(text, f"netimpl.nbd.{n}")]
    missing += [f"NbdServer.{m}" for m in sorted(_own_members(netimpl.nbd.NbdServer))
                if not mentions(text, f"NbdServer.{m}")]
    assert not missing, f"not in docs/api.md: {', '.join(missing)}"


def _section(text: str, heading: str) -> str:
    start = text.index(heading)
    level = heading.split(" ")[0]
    rest = text[start + len(heading):]
    end = re.search(rf"^#{{1,{len(level)}}} ", rest, re.MULTILINE)
    return rest[:end.start()] if end else rest


def _long_flags(parser: argparse.ArgumentParser) -> list[str]:
    return [max(a.option_strings, key=len) for a in parser._actions if a.option_strings and a.dest != "help"]


def test_every_flag_of_the_nbd_command_line_is_documented():
    section = _section(api_text(), "### `python -m netimpl.nbd`")
    missing = [f for f in _long_flags(nbd_main.parser()) if not mentions(section, f)]
    assert not missing, f"python -m netimpl.nbd flags not in docs/api.md: {', '.join(missing)}"


def test_every_command_and_flag_of_the_netimpl_command_line_is_documented(monkeypatch):
    section = _section(api_text(), "## Command lines")
    parsers = {}

    def capture(self, args=None, namespace=None):
        parsers[self.prog.split()[-1]] = self
        raise SystemExit(0)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    for command in COMMANDS:
        with pytest.raises(SystemExit):
            cli_main([command])
    missing = [c for c in COMMANDS if not mentions(section, f"netimpl {c}")]
    missing += [f"{c} {f}" for c, p in parsers.items() for f in _long_flags(p) if f not in section]
    assert set(parsers) == set(COMMANDS) and not missing, missing


def test_the_docstrings_lead_to_the_reference():
    assert API.is_file()
    for obj in (netimpl, netimpl.Sock, netimpl.SockGroup):
        assert "docs/api.md" in (obj.__doc__ or ""), obj


def test_help_describes_every_public_method_and_property():
    bare = []
    for n in netimpl.__all__:
        cls = getattr(netimpl, n)
        if not inspect.getdoc(cls):
            bare.append(n)
        if not isinstance(cls, type):
            continue
        for m in dir(cls):
            static = inspect.getattr_static(cls, m)
            if m.startswith("_") or not (callable(static) or isinstance(static, property)):
                continue
            if not inspect.getdoc(static if isinstance(static, property) else getattr(cls, m)):
                bare.append(f"{n}.{m}")
    assert not bare, f"no docstring: {', '.join(bare)}"
