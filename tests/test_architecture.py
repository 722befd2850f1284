"""The one-way rule of ARCHITECTURE.md, checked on the source: vcam -> core -> engines, and core reaches engines only
through `engines.base` (the `Engine` contract and the data it carries)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def imported_modules(path: Path) -> set[str]:
    """Every absolute module a file imports, at any depth (lazy imports inside functions count too)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def package_files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def top(module: str) -> str:
    return module.split(".")[0]


@pytest.mark.parametrize("path", package_files("engines"), ids=lambda p: str(p.relative_to(ROOT)))
def test_engines_import_neither_core_nor_vcam(path: Path) -> None:
    upward = {m for m in imported_modules(path) if top(m) in ("core", "vcam")}
    assert not upward, f"{path.relative_to(ROOT)} imports {sorted(upward)}"


@pytest.mark.parametrize("path", package_files("core"), ids=lambda p: str(p.relative_to(ROOT)))
def test_core_never_imports_vcam_and_reaches_engines_only_through_base(path: Path) -> None:
    modules = imported_modules(path)
    assert not {m for m in modules if top(m) == "vcam"}, f"{path.relative_to(ROOT)} imports vcam"
    engines = {m for m in modules if top(m) == "engines"}
    assert engines <= {"engines.base"}, f"{path.relative_to(ROOT)} imports {sorted(engines - {'engines.base'})}"


def test_the_rule_is_checked_on_real_files() -> None:
    """Guard against a layout change that would make the specs above vacuous."""
    assert len(package_files("core")) >= 5 and len(package_files("engines")) >= 5
    assert "engines.base" in imported_modules(ROOT / "core" / "stream.py")
