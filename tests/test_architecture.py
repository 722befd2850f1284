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


def test_architecture_md_names_every_module_and_only_modules_that_exist() -> None:
    """ARCHITECTURE.md is the map of the rooms: a new module must be put on it, a removed one taken off."""
    import re

    text = (ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8")
    for package in ("core", "engines", "vcam"):
        for path in package_files(package):
            if path.name == "__init__.py" or "obs" in path.parent.name or path.parent.name == "tiny":
                continue
            assert f"`{path.stem}`" in text, f"ARCHITECTURE.md does not name {path.relative_to(ROOT)}"
    row = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| `")}
    for package in ("core", "engines", "vcam"):
        named = re.findall(r"`([a-z_]+)`", row[f"`{package}/`"].split("|")[3])
        for name in named:
            candidates = [ROOT / package / f"{name}.py", ROOT / package / name, ROOT / package / "controls" / f"{name}.py",
                          ROOT / package / "tiny" / f"{name}.py", ROOT / package / "tiny" / name]
            assert any(c.exists() for c in candidates), f"ARCHITECTURE.md names {package}/{name}, which does not exist"
