"""netimpl.nbd is an embedding example: it may use ``import netimpl`` and its public modules, nothing else."""

from __future__ import annotations

import ast
import pathlib
import sys

import netimpl.nbd

PACKAGE = pathlib.Path(netimpl.nbd.__file__).parent
#: netimpl's public modules beside the package itself (documented in docs/api.md)
PUBLIC_MODULES = {"netimpl", "netimpl.aio", "netimpl.workers"}


def test_the_nbd_target_imports_only_netimpl_public_names():
    offenders = []
    for path in sorted(PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                if node.level == 1 or node.module is None:
                    continue                                   # its own modules
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if name in PUBLIC_MODULES or (top in sys.stdlib_module_names and top != "netimpl"):
                    continue
                offenders.append(f"{path.name}:{node.lineno}: {name}")
            if isinstance(node, ast.ImportFrom) and node.module == "netimpl":
                offenders += [f"{path.name}:{node.lineno}: netimpl.{a.name}" for a in node.names
                              if a.name not in netimpl.__all__]
    assert not offenders, offenders
