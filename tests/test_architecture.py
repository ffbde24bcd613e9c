"""The package structure the import-linter contracts cannot express: no module imports a private
(underscore) name from another module of ours (``amg``, ``sam_model``, ``tools``)."""

from __future__ import annotations

import ast

from .conftest import REPO

PACKAGES = ("amg", "sam_model", "tools")
# Private imports across modules that are tolerated: none.
KNOWN: set[tuple[str, str, str]] = set()


def absolute_module(path: str, node: ast.ImportFrom) -> str:
    """The module an ``ImportFrom`` in ``path`` (repo-relative) names, relative levels resolved."""
    if node.level == 0:
        return node.module or ""
    package = path[:-3].split("/")[:-1]  # a module's package; for __init__.py, its own
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def private_imports() -> set[tuple[str, str, str]]:
    """``(file, module, name)`` of every ``from <our module> import _name`` in our packages."""
    found = set()
    for pkg in PACKAGES:
        for f in sorted((REPO / pkg).rglob("*.py")):
            rel = f.relative_to(REPO).as_posix()
            for node in ast.walk(ast.parse(f.read_text(), rel)):
                if not isinstance(node, ast.ImportFrom):
                    continue
                module = absolute_module(rel, node)
                if module.split(".")[0] not in PACKAGES:
                    continue
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        found.add((rel, module, alias.name))
    return found


def test_absolute_module_resolves_relative_imports():
    def first_import(src: str) -> ast.ImportFrom:
        return ast.parse(src).body[0]
    assert absolute_module("amg/dataset/run.py", first_import("from ..io import x")) == "amg.io"
    assert absolute_module("amg/dataset/run.py", first_import("from .jobs import x")) == "amg.dataset.jobs"
    assert absolute_module("amg/__init__.py", first_import("from .config import x")) == "amg.config"
    assert absolute_module("amg/rle.py", first_import("from sam_model import x")) == "sam_model"


def test_no_private_name_imported_across_modules():
    assert private_imports() - KNOWN == set()
