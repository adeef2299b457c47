"""The documentation is true to the code: every public name documented, every field visible to help()."""

from __future__ import annotations

import dataclasses
import pydoc

import pytest

import netimpl


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
