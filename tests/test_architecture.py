"""The one-way rule of ARCHITECTURE.md, checked on the source: vcam -> core -> engines, and core reaches engines only
through `engines.base` (the `Engine` contract and the data it carries)."""
from __future__ import annotations

import ast
import re
import sys
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


OWN_PACKAGES = {"core", "engines", "vcam", "presets"}


def room_rows() -> dict[str, list[str]]:
    """ARCHITECTURE.md's rooms table: `core/` -> its cells (room, may import, modules)."""
    text = (ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8")
    return {line.split("|")[1].strip(): [cell.strip() for cell in line.split("|")[1:-1]]
            for line in text.splitlines() if line.startswith("| `")}


def test_architecture_md_names_every_module_in_its_own_rooms_row_and_only_modules_that_exist() -> None:
    """ARCHITECTURE.md is the map of the rooms: a new module must be put on its room's row, a removed one taken off."""
    rows = room_rows()
    for package in ("core", "engines", "vcam"):
        named = set(re.findall(r"`([a-z_]+)`", rows[f"`{package}/`"][2]))
        for path in package_files(package):
            if path.name == "__init__.py" or path.parent.name in ("obs", "tiny"):  # the OBS script, the tiny model
                continue
            assert path.stem in named, f"ARCHITECTURE.md's `{package}/` row does not name {path.relative_to(ROOT)}"
        for name in named:
            candidates = [ROOT / package / f"{name}.py", ROOT / package / name, ROOT / package / "controls" / f"{name}.py",
                          ROOT / package / "tiny" / f"{name}.py", ROOT / package / "tiny" / name]
            assert any(c.exists() for c in candidates), f"ARCHITECTURE.md names {package}/{name}, which does not exist"


def allowed_libraries(may_import: str) -> dict[str | None, set[str]]:
    """The "may import" cell as {None: libraries for the whole room, "sub": libraries for `sub/` only}. Items are
    comma-separated import names, each with an optional note in brackets; "(`sub/` only ...)" limits one to a
    folder; own packages and backticked items (`engines.base` only) are the one-way rule's business."""
    allowed: dict[str | None, set[str]] = {None: set()}
    for item in re.split(r",\s*(?![^(]*\))", may_import):
        name = item.split()[0] if item.split() else ""
        if not name or name.startswith("`") or name in OWN_PACKAGES:
            continue
        only = re.search(r"\(`([a-z_]+)/` only", item)
        allowed.setdefault(only[1] if only else None, set()).add(name)
    return allowed


@pytest.mark.parametrize("package", ["core", "engines", "vcam"])
def test_each_room_imports_only_the_libraries_its_row_allows(package: str) -> None:
    allowed = allowed_libraries(room_rows()[f"`{package}/`"][1])
    assert allowed[None], "the parser read the row"
    for path in package_files(package):
        for module in imported_modules(path):
            name = top(module)
            if name in sys.stdlib_module_names or name in OWN_PACKAGES or name == "__future__":
                continue
            assert name in allowed[None] | allowed.get(path.parent.name, set()), (
                f"{path.relative_to(ROOT)} imports {name}, which ARCHITECTURE.md's `{package}/` row does not list")
