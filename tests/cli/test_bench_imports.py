"""bench/ is not type-checked with the package: every name it imports from aetherium_hpc exists.

A module moved or a name renamed in the package (as ``runtime.JobIdentity`` became
``identity.JobIdentity``) otherwise shows up only when a section of ``python -m bench`` reaches it.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util

import pytest
from testenv import ROOT

BENCH = sorted((ROOT / "bench").glob("*.py"))


def _imports() -> list[tuple[str, str, str]]:
    """(bench file, module, name) of every ``from aetherium_hpc... import name`` in bench/."""
    out = []
    for path in BENCH:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("aetherium_hpc"):
                out += [(path.name, node.module or "", alias.name) for alias in node.names]
    return out


def test_bench_imports_something_of_the_package() -> None:
    assert len(_imports()) >= 10, "the parse found the bench's imports"


@pytest.mark.parametrize(("where", "module", "name"), _imports(), ids=lambda v: str(v))
def test_every_name_bench_imports_exists(where: str, module: str, name: str) -> None:
    mod = importlib.import_module(module)
    assert hasattr(mod, name) or importlib.util.find_spec(f"{module}.{name}") is not None, (
        f"bench/{where}: `from {module} import {name}`: no such name"
    )
