"""One settings schema: every field of every section is a preset key, a `vcam run --help` line and a README row,
with one name and one default; the README's tables are the generated ones."""
from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vcam.options import README_MARKERS, _toml, option_name, rewrite_readme
from vcam.presets import load_preset
from vcam.sections import GROUPS, user_fields

ROOT = Path(__file__).resolve().parents[1]


def vcam_help(command: str) -> str:
    result = subprocess.run([sys.executable, "-m", "vcam.cli", command, "--help"], capture_output=True, text=True,
                            timeout=120, env={**os.environ, "COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("command", ["run", "bench"])
def test_help_lists_every_setting_of_the_schema_under_its_group(command: str) -> None:
    text = vcam_help(command)
    titled = [group for group in GROUPS if group.title]
    starts = [text.index(f"\n{group.title}:\n") for group in dict({g.title: g for g in titled}).values()]
    assert starts == sorted(starts), "the --help groups keep the schema's order"
    for group in titled:
        section = text[text.index(f"\n{group.title}:\n"):]
        section = section[:section.find("\n\n", 1) if "\n\n" in section[1:] else None]
        for cls in group.classes:
            for f, _ in user_fields(cls, where="cli"):
                assert f"  {option_name(group, f)}" in section, (group.title, f.name)
                if f.metadata.get("preset", True):
                    assert f"preset {group.key}.{f.name}" in " ".join(section.split()), (group.title, f.name)


def test_old_spellings_are_accepted_but_not_advertised() -> None:
    text = vcam_help("run")
    assert "--guidance {none,full,self,initialize}" in text and "--guidance-scale X" in text
    assert "--cfg" not in text and "--frame-buffer " not in text and "--frame-buffer-size N" in text


def test_readme_tables_are_the_ones_generated_from_the_schema(tmp_path: Path) -> None:
    copy = tmp_path / "README.md"
    shutil.copy(ROOT / "README.md", copy)
    for begin, end in README_MARKERS.values():
        assert copy.read_text().count(begin) == 1 and copy.read_text().count(end) == 1
    assert not rewrite_readme(str(copy)), "README tables differ from the schema: run python -m vcam.options README.md"


def test_the_table_tool_rewrites_a_stale_readme_and_check_only_reports_it(tmp_path: Path) -> None:
    stale = tmp_path / "README.md"
    stale.write_text((ROOT / "README.md").read_text().replace("| `--seed N` |", "| `--seed N` (old) |"))

    def tool(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "vcam.options", *args, str(stale)], capture_output=True,
                              text=True, timeout=120)

    checked = tool("--check")
    assert checked.returncode == 1 and "run python -m vcam.options" in checked.stdout
    assert "(old)" in stale.read_text(), "--check leaves the file as it is"
    rewritten = tool()
    assert rewritten.returncode == 0 and "rewritten" in rewritten.stdout and "(old)" not in stale.read_text()
    assert tool("--check").returncode == 0


def test_readme_options_table_names_every_option_and_preset_key() -> None:
    readme = (ROOT / "README.md").read_text()
    begin, end = README_MARKERS["options"]
    options = readme[readme.index(begin):readme.index(end)]
    begin, end = README_MARKERS["presets"]
    presets = readme[readme.index(begin):readme.index(end)]
    for group in GROUPS:
        for cls in group.classes:
            for f, _ in user_fields(cls):
                assert f"`{f.name}`" in presets.split(f"`[{group.key}]`")[1].split("\n")[0], (group.key, f.name)
            if group.title:
                for f, _ in user_fields(cls, where="cli"):
                    assert f"`{option_name(group, f)}" in options, f.name


def test_every_preset_key_accepts_its_documented_default(tmp_path: Path) -> None:
    lines = []
    for group in GROUPS:
        lines.append(f"[{group.key}]")
        for cls in group.classes:
            for f, _ in user_fields(cls):
                default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
                if default is not None:
                    lines.append(f"{f.name} = {_toml(default)}")
    lines += ["[[prompts]]", 'name = "a"', 'text = "first style"']
    path = tmp_path / "defaults.toml"
    path.write_text("\n".join(lines) + "\n")
    preset = load_preset(path)
    for group in GROUPS:
        if group.key != "stream":
            assert getattr(preset, group.key) == group.classes[0](), group.key
    assert dataclasses.replace(preset.stream, prompt="x") == dataclasses.replace(type(preset.stream)(), prompt="x")
    assert preset.notices == ()
