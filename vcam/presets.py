"""Presets: one TOML file holds everything a show needs (model, stream, camera, output, controls, prompts).

The TOML maps one-to-one onto the frozen dataclasses below, so a preset is just configuration that can be
passed around explicitly. Validation is strict on purpose: a misspelt key silently falling back to a default is
the hardest kind of live-show bug to find, so unknown keys, wrong types and out-of-range values all raise
`PresetError` with one line naming the file, the dotted key and what is allowed.

Shipped presets live in the `presets` package (found with importlib.resources, so they work from a wheel);
user presets in `<user config dir>/vcam/presets/*.toml` override shipped ones of the same name.
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.resources
import os
import sys
import typing
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, Mapping

import platformdirs

from core.config import ConfigError, SimilarityFilterConfig, StreamConfig, stream_steps
from engines.parallel_settings import DeviceSettings
from vcam.controls import one_line
from vcam.controls.hotkeys import parse_hotkey
from vcam.sections import (GROUPS, CameraSection, Fail, HotkeysSection, ModelSection, ObsSection,
                           OscSection, OutputSection, SlotChoice, check_value, type_name, user_fields)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on 3.10
    import tomli as tomllib

MAX_DEFAULT_PROMPT_HOTKEYS = 9
# A preset is a few kilobytes of hand-written TOML; anything far bigger is the wrong file (or an attack on the
# listing): refuse it before parsing, so time and memory stay bounded whatever lies in the presets folder.
MAX_PRESET_BYTES = 1_000_000
MAX_LISTED_CHARS = 120  # `vcam presets` prints one short line per preset, whatever a description holds


class PresetError(ValueError):
    """A preset that cannot be used; the one-line message names the file, the key and the fix."""


@dataclass(frozen=True)
class PromptSpec:
    """One named style; `hotkey` defaults to <ctrl>+<alt>+N for the first nine prompts; "" or None means none."""

    name: str
    text: str
    hotkey: str | None = None


@dataclass(frozen=True)
class Preset:
    """A parsed preset. `stream` is the core's `StreamConfig` itself (starting on the first prompt); `slots` keeps
    the file's strength/steps shorthand, which the command line's --strength/--steps combine with; `notices` are
    the one-line notes parsing produced (old key spellings, stream settings that change nothing), for the caller
    to say once."""

    name: str
    description: str = ""
    model: ModelSection = ModelSection()
    stream: StreamConfig = StreamConfig()
    slots: SlotChoice = SlotChoice()
    filter: SimilarityFilterConfig = SimilarityFilterConfig()
    camera: CameraSection = CameraSection()
    output: OutputSection = OutputSection()
    hotkeys: HotkeysSection = HotkeysSection()
    obs: ObsSection = ObsSection()
    osc: OscSection = OscSection()
    devices: DeviceSettings = DeviceSettings()
    prompts: tuple[PromptSpec, ...] = ()
    source_path: Path | None = None
    notices: tuple[str, ...] = ()

    @property
    def prompt_names(self) -> list[str]:
        return [prompt.name for prompt in self.prompts]

    def prompt(self, name: str) -> PromptSpec:
        for prompt in self.prompts:
            if prompt.name == name:
                return prompt
        raise PresetError(f"preset '{self.name}' has no prompt {name!r}; it has: {', '.join(self.prompt_names)}")

    def stream_config(self, prompt: str | None = None) -> StreamConfig:
        """The core's `StreamConfig` for this preset, starting on `prompt` (default: the first prompt)."""
        return self.stream if prompt is None else replace(self.stream, prompt=prompt)


@dataclass(frozen=True)
class PresetInfo:
    """What `vcam presets` lists: a preset's name, its one-line description, where it lives."""

    name: str
    description: str
    path: Path
    origin: Literal["shipped", "user"]


# ---------------------------------------------------------------------------------------------- locations


def user_preset_dir() -> Path:
    """Where users keep their own presets (`~/.config/vcam/presets` on Linux)."""
    return Path(platformdirs.user_config_dir("vcam")) / "presets"


def _shipped_preset_files() -> dict[str, Path]:
    try:
        entries = [Path(str(entry)) for entry in importlib.resources.files("presets").iterdir()]
    except NotADirectoryError:
        # An editable install made before presets/__init__.py existed maps `presets` as a namespace package,
        # which importlib.resources cannot read; its search path still names the real folder.
        entries = [entry for folder in importlib.import_module("presets").__path__ if os.path.isdir(folder)
                   for entry in Path(folder).iterdir()]
    return {entry.stem: entry for entry in sorted(entries) if entry.suffix == ".toml"}


def _user_preset_files(user_dir: Path | None) -> dict[str, Path]:
    directory = user_dir if user_dir is not None else user_preset_dir()
    if not directory.is_dir():
        return {}
    return {path.stem: path for path in sorted(directory.glob("*.toml"))}


def list_presets(user_dir: Path | None = None) -> list[PresetInfo]:
    """Shipped and user presets by name; a user preset replaces a shipped one of the same name."""
    found: dict[str, PresetInfo] = {}
    for origin, files in (("shipped", _shipped_preset_files()), ("user", _user_preset_files(user_dir))):
        for name, path in files.items():
            found[name] = PresetInfo(name, _description_of(path), path, origin)  # type: ignore[arg-type]
    return [found[name] for name in sorted(found)]


def _description_of(path: Path) -> str:
    try:
        description = _read_toml(path).get("description", "")
    except PresetError as error:
        reason = str(error).removeprefix(f"{path}: ")  # the listing names the preset already
        return one_line(f"(unreadable: {reason})", MAX_LISTED_CHARS)
    return one_line(description, MAX_LISTED_CHARS) if isinstance(description, str) else ""


def load_preset(name_or_path: str | Path, user_dir: Path | None = None) -> Preset:
    """Load a preset by name (user presets first, then shipped ones) or from a .toml path."""
    candidate = Path(name_or_path)
    # Only something that looks like a path is one, so a folder called "tiny" in the cwd cannot shadow a name.
    if candidate.suffix == ".toml" or "/" in str(name_or_path) or os.sep in str(name_or_path):
        if not candidate.is_file():
            raise PresetError(f"{candidate}: no such preset file; check the path or run 'vcam presets' for names")
        return parse_preset(_read_toml(candidate), name=candidate.stem, source=candidate)
    files = {**_shipped_preset_files(), **_user_preset_files(user_dir)}
    if str(name_or_path) not in files:
        raise PresetError(f"unknown preset {str(name_or_path)!r}; available: {', '.join(sorted(files))} "
                          "(`vcam presets` describes them)")
    path = files[str(name_or_path)]
    return parse_preset(_read_toml(path), name=path.stem, source=path)


def _read_toml(path: Path) -> dict[str, Any]:
    """Parse one preset file; every way a file can be wrong (too big, not UTF-8, bad syntax, nested too deep,
    unreadable) is one `PresetError` line naming the file."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_PRESET_BYTES + 1)  # never more than the limit in memory
    except OSError as error:
        raise PresetError(f"{path}: cannot be read ({error.strerror})") from None
    if len(data) > MAX_PRESET_BYTES:
        raise PresetError(f"{path}: larger than {MAX_PRESET_BYTES // 1_000_000} MB, far more than a preset holds; "
                          "check that this is the right file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise PresetError(f"{path}: not UTF-8 text (byte 0x{data[error.start]:02x} on line {line}); "
                          "save the file as UTF-8") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        reason = one_line(str(error), MAX_LISTED_CHARS)
        raise PresetError(f"{path}: not valid TOML ({reason}); fix the syntax at that line") from None
    except RecursionError:
        raise PresetError(f"{path}: not valid TOML (nested too deeply); a preset needs at most two levels") from None


# ---------------------------------------------------------------------------------------------- validation

_TOP_LEVEL_KEYS = ("description", *(group.key for group in GROUPS), "prompts")


def parse_preset(data: Mapping[str, Any], name: str, source: Path | None = None) -> Preset:
    """Turn parsed TOML into a validated `Preset`; every problem becomes one `PresetError` line."""
    where = str(source) if source is not None else f"preset '{name}'"

    def fail(key: str, message: str) -> PresetError:
        return PresetError(f"{where}: {key}: {message}")

    _reject_unknown(data, _TOP_LEVEL_KEYS, "", fail)
    obs_table = data.get("obs", {})
    if isinstance(obs_table, Mapping) and "password" in obs_table:
        raise fail("obs.password", "passwords do not belong in preset files; set VCAM_OBS_PASSWORD or store it "
                   "in the system keyring instead, and delete this key")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise fail("description", f"must be a string, got {type_name(description)}")
    prompts = _build_prompts(data.get("prompts"), fail)
    notices: list[str] = []
    sections: dict[str, Any] = {}
    for group in GROUPS:
        values = _section_values(group.classes, data.get(group.key, {}), group.key, fail, notices, where)
        if group.key == "stream":
            sections["slots"] = SlotChoice(**values[SlotChoice])
            sections["stream"] = _build_stream(values[StreamConfig], sections["slots"], prompts, fail)
        else:
            sections[group.key] = group.classes[0](**values[group.classes[0]])
    notices += [f"{where}: stream: {note}" for note in sections["stream"].ineffective_settings()]
    preset = Preset(name=name, description=description, prompts=prompts, source_path=source,
                    notices=tuple(notices), **sections)
    _check_hotkeys(preset, fail)
    for scene, prompt_name in preset.obs.scenes.items():
        if prompt_name not in preset.prompt_names:
            raise fail(f"obs.scenes.{scene}", f"names prompt {prompt_name!r}, which is not one of the preset's "
                       f"prompts ({', '.join(preset.prompt_names)})")
    return preset


def _reject_unknown(table: Mapping[str, Any], allowed: typing.Iterable[str], prefix: str, fail: Fail) -> None:
    allowed = tuple(allowed)
    for key in table:
        if key not in allowed:
            raise fail(f"{prefix}{key}", f"unknown key; allowed here: {', '.join(allowed)}")


def _section_values(classes: tuple[type, ...], table: Any, dotted: str, fail: Fail, notices: list[str],
                    where: str) -> dict[type, dict[str, Any]]:
    """The checked values of one section's table, split by the dataclass each key belongs to. A key's previous
    spelling (the field's `old`) is accepted for one release and noted once in `notices`."""
    if not isinstance(table, Mapping):
        raise fail(dotted, f"must be a table ([{dotted}]), got {type_name(table)}")
    owners = {f.name: (cls, f, hint) for cls in classes for f, hint in user_fields(cls)}
    renamed = {f.metadata["old"]: name for name, (_, f, _) in owners.items() if f.metadata.get("old")}
    _reject_unknown(table, [*owners, *(old for old in renamed if old in table)], f"{dotted}.", fail)
    values: dict[type, dict[str, Any]] = {cls: {} for cls in classes}
    for key, value in table.items():
        if key in renamed:
            if renamed[key] in table:
                raise fail(f"{dotted}.{key}", f"is the old name of {renamed[key]}; keep only {renamed[key]}")
            notices.append(f"{where}: {dotted}.{key} is now called {dotted}.{renamed[key]}; the old name is "
                           "accepted until the next release")
            key = renamed[key]
        cls, f, hint = owners[key]
        values[cls][key] = check_value(value, hint, f.metadata, f"{dotted}.{key}", fail)
    return values


def _build_stream(values: dict[str, Any], slots: SlotChoice, prompts: tuple[PromptSpec, ...],
                  fail: Fail) -> StreamConfig:
    """The file's [stream] as the core's StreamConfig: strength + steps set the steps (`core.config.stream_steps`),
    the first prompt is the starting prompt; the core's own rules (multiples of 8, increasing indices, solver
    settings) are reported as preset errors."""
    if "t_index_list" in values and (slots.strength is not None or slots.steps is not None):
        raise fail("stream.t_index_list", "set either t_index_list or strength + steps, not both")
    scheduler = values.get("scheduler", StreamConfig.scheduler)
    if scheduler == "lcm" and slots.steps is not None and slots.strength is None:
        raise fail("stream.steps", "steps needs strength too (e.g. strength = 0.5), or use t_index_list")
    try:
        if scheduler != "lcm" or slots.strength is not None:  # missing steps: StreamConfig's default
            values = {**values, **stream_steps(scheduler, slots.strength, slots.steps)}
        return StreamConfig(**values, prompt=prompts[0].text)
    except ConfigError as error:
        raise fail("stream", str(error)) from None


def _build_prompts(raw: Any, fail: Fail) -> tuple[PromptSpec, ...]:
    if raw is None:
        raise fail("prompts", "a preset needs at least one [[prompts]] entry with name and text")
    if not isinstance(raw, list) or not raw or not all(isinstance(entry, Mapping) for entry in raw):
        raise fail("prompts", "must be one or more [[prompts]] tables with name and text")
    prompts: list[PromptSpec] = []
    seen: set[str] = set()
    for index, entry in enumerate(raw):
        dotted = f"prompts[{index}]"
        _reject_unknown(entry, ("name", "text", "hotkey"), f"{dotted}.", fail)
        for required in ("name", "text"):
            if not isinstance(entry.get(required), str) or not entry[required].strip():
                raise fail(f"{dotted}.{required}", "must be a non-empty string")
        if entry["name"] in seen:
            raise fail(f"{dotted}.name", f"duplicate prompt name {entry['name']!r}; prompt names must be unique")
        seen.add(entry["name"])
        hotkey = entry.get("hotkey")
        if hotkey is None:
            hotkey = f"<ctrl>+<alt>+{index + 1}" if index < MAX_DEFAULT_PROMPT_HOTKEYS else ""
        if not isinstance(hotkey, str):
            raise fail(f"{dotted}.hotkey", f"must be a string like \"<ctrl>+<alt>+1\", got {type_name(hotkey)}")
        prompts.append(PromptSpec(name=entry["name"], text=entry["text"], hotkey=hotkey))
    return tuple(prompts)


def _check_hotkeys(preset: Preset, fail: Fail) -> None:
    """Every combination must parse, and no two actions may share one (the second would silently win)."""
    used: dict[frozenset[str], str] = {}
    combos = [(f"hotkeys.{f.name}", getattr(preset.hotkeys, f.name)) for f in dataclasses.fields(HotkeysSection)]
    combos += [(f"prompts[{i}].hotkey", prompt.hotkey or "") for i, prompt in enumerate(preset.prompts)]
    for key, combo in combos:
        if not combo:
            continue
        try:
            parsed = parse_hotkey(combo)
        except ValueError:
            raise fail(key, f"{combo!r} is not a valid hotkey; write keys joined by '+', modifiers and named keys "
                       "in angle brackets, e.g. \"<ctrl>+<alt>+p\" or \"<ctrl>+<shift>+<f5>\"") from None
        if parsed in used:
            raise fail(key, f"{combo!r} is already bound by {used[parsed]}; choose another combination")
        used[parsed] = key
