"""How the package is put together: modules share only public names."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
#: Code a reader runs or reads: the package, its scripts and benchmarks (tests may look inside).
SOURCES = sorted(path for folder in ("facelib", "scripts", "benchmarks") for path in (REPO / folder).rglob("*.py"))


def private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_names_from_other_modules(path: Path) -> list[str]:
    """``from m import _x`` and ``m._x`` (``m`` an imported module) in one file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    modules, found = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if private(alias.name):
                    found.append(f"line {node.lineno}: from {'.' * node.level}{node.module or ''} import {alias.name}")
                modules.add(alias.asname or alias.name)  # a submodule (from facelib import metrics)
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and private(node.attr) and isinstance(node.value, ast.Name)
                and node.value.id in modules):
            found.append(f"line {node.lineno}: {node.value.id}.{node.attr}")
    return found


@pytest.mark.parametrize("path", SOURCES, ids=[str(path.relative_to(REPO)) for path in SOURCES])
def test_modules_share_no_private_names(path):
    found = private_names_from_other_modules(path)
    assert not found, f"{path.relative_to(REPO)} uses another module's private names (make them public " \
                      f"where they are shared, or move them): " + "; ".join(found)
