"""Presets: one TOML file holds everything a show needs (model, stream, camera, output, controls, prompts).

The TOML maps one-to-one onto the frozen dataclasses below, so a preset is just configuration that can be
passed around explicitly. Validation is strict on purpose: a misspelt key silently falling back to a default is
the hardest kind of live-show bug to find, so unknown keys, wrong types and out-of-range values all raise
`PresetError` with one line naming the file, the dotted key and what is allowed.

Shipped presets live in the `presets` package (found with importlib.resources, so they work from a wheel);
user presets in `<user config dir>/vcam/presets/*.toml` override shipped ones of the same name.
"""
from __future__ import annotations

import collections.abc
import dataclasses
import importlib
import importlib.resources
import os
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping

import platformdirs

from core.config import ConfigError, StreamConfig, t_index_list_from_strength
from vcam.controls.hotkeys import parse_hotkey

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on 3.10
    import tomli as tomllib

ENGINES = ("auto", "torch", "torch-compile", "onnxruntime", "tensorrt")
FITS = ("crop", "letterbox")
MAX_DEFAULT_PROMPT_HOTKEYS = 9


class PresetError(ValueError):
    """A preset that cannot be used; the one-line message names the file, the key and the fix."""


def _range(low: float | None = None, high: float | None = None) -> dict[str, Any]:
    return {"range": (low, high)}


@dataclass(frozen=True)
class ModelSection:
    """Which weights to load and how to run them (resolved offline by `engines`)."""

    model: str = "tiny"  # "tiny" | folder | .safetensors file | Hugging Face id already in the local cache
    vae: str = ""  # TAESD folder / id, or "" for the model's own VAE
    lora: tuple[str, ...] = ()
    lora_scale: float = field(default=1.0, metadata=_range(0.0, 4.0))
    engine: Literal["auto", "torch", "torch-compile", "onnxruntime", "tensorrt"] = "auto"


@dataclass(frozen=True)
class StreamSection:
    """The stream-batch settings; either `t_index_list` or `strength` (+ `steps`) picks the denoising slots."""

    width: int = field(default=512, metadata=_range(64, 2048))
    height: int = field(default=512, metadata=_range(64, 2048))
    t_index_list: tuple[int, ...] | None = None
    strength: float | None = field(default=None, metadata=_range(0.01, 1.0))
    steps: int | None = field(default=None, metadata=_range(1, 50))
    guidance: Literal["none", "full", "self", "initialize"] = "none"
    guidance_scale: float = field(default=1.2, metadata=_range(0.0, 20.0))
    delta: float = field(default=1.0, metadata=_range(0.0, 10.0))
    seed: int = field(default=2, metadata=_range(0, 2**32 - 1))
    frame_buffer: int = field(default=1, metadata=_range(1, 16))
    negative_prompt: str = ""
    # ddim / dpmsolver++ (named as StreamConfig's fields; `strength` above is shared with the lcm grid)
    scheduler: Literal["lcm", "ddim", "dpmsolver++"] = "lcm"
    num_inference_steps: int = field(default=StreamConfig.num_inference_steps, metadata=_range(1, 1000))
    solver_order: int = field(default=StreamConfig.solver_order, metadata=_range(1, 3))
    use_karras_sigmas: bool = False
    lower_order_final: bool = True

    def solver_settings(self) -> dict[str, Any]:
        """The StreamConfig fields of the ddim / dpmsolver++ solvers (defaults for lcm)."""
        return dict(scheduler=self.scheduler, num_inference_steps=self.num_inference_steps,
                    strength=self.strength if self.scheduler != "lcm" and self.strength is not None else 1.0,
                    solver_order=self.solver_order, use_karras_sigmas=self.use_karras_sigmas,
                    lower_order_final=self.lower_order_final)

    def resolved_t_index_list(self) -> tuple[int, ...]:
        if self.scheduler != "lcm":
            return self.t_index_list or StreamConfig.t_index_list  # unused by the solvers
        if self.t_index_list is not None:
            return self.t_index_list
        if self.strength is not None:
            return t_index_list_from_strength(self.strength, self.steps or 2)
        return StreamConfig.t_index_list


@dataclass(frozen=True)
class FilterSection:
    """The stochastic similarity filter: skip the UNet when the camera image barely changed."""

    enabled: bool = False
    threshold: float = field(default=0.98, metadata=_range(0.0, 1.0))
    max_skip: int = field(default=10, metadata=_range(0, 1000))


@dataclass(frozen=True)
class CameraSection:
    """Where frames come from; width/height/fps 0 mean "whatever the device offers"."""

    source: str = "camera:0"  # "camera:N" | video or image file | "synthetic" | "synthetic:static"
    width: int = field(default=0, metadata=_range(0, 7680))
    height: int = field(default=0, metadata=_range(0, 4320))
    fps: int = field(default=0, metadata=_range(0, 240))


@dataclass(frozen=True)
class OutputSection:
    """Where frames go and in which shape the virtual camera presents them."""

    sink: str = "auto"  # "auto" | "vcam" | "window" | file path | "mjpeg" | "null"
    width: int = field(default=1280, metadata=_range(64, 7680))
    height: int = field(default=720, metadata=_range(64, 4320))
    fps: int = field(default=30, metadata=_range(1, 240))
    fit: Literal["crop", "letterbox"] = "crop"
    mirror: bool = False
    backend: str = ""  # pyvirtualcam backend name, "" = try them in order


@dataclass(frozen=True)
class HotkeysSection:
    """Global hotkeys in pynput `GlobalHotKeys` syntax; "" disables one."""

    next: str = "<ctrl>+<alt>+<right>"
    previous: str = "<ctrl>+<alt>+<left>"
    pause: str = "<ctrl>+<alt>+p"
    filter: str = "<ctrl>+<alt>+f"


@dataclass(frozen=True)
class ObsSection:
    """OBS WebSocket control. No password here: it comes from VCAM_OBS_PASSWORD or the keyring."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = field(default=4455, metadata=_range(1, 65535))
    scenes: Mapping[str, str] = field(default_factory=lambda: types.MappingProxyType({}))  # scene -> prompt name


@dataclass(frozen=True)
class OscSection:
    """OSC control over UDP."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = field(default=9000, metadata=_range(1, 65535))


@dataclass(frozen=True)
class PromptSpec:
    """One named style; `hotkey` defaults to <ctrl>+<alt>+N for the first nine prompts; "" or None means none."""

    name: str
    text: str
    hotkey: str | None = None


@dataclass(frozen=True)
class Preset:
    name: str
    description: str = ""
    model: ModelSection = ModelSection()
    stream: StreamSection = StreamSection()
    filter: FilterSection = FilterSection()
    camera: CameraSection = CameraSection()
    output: OutputSection = OutputSection()
    hotkeys: HotkeysSection = HotkeysSection()
    obs: ObsSection = ObsSection()
    osc: OscSection = OscSection()
    prompts: tuple[PromptSpec, ...] = ()
    source_path: Path | None = None

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
        stream = self.stream
        return StreamConfig(
            width=stream.width,
            height=stream.height,
            t_index_list=stream.resolved_t_index_list(),
            frame_buffer_size=stream.frame_buffer,
            guidance=stream.guidance,
            guidance_scale=stream.guidance_scale,
            delta=stream.delta,
            seed=stream.seed,
            prompt=prompt if prompt is not None else self.prompts[0].text,
            negative_prompt=stream.negative_prompt,
            **stream.solver_settings(),
        )


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
        return f"(unreadable: {error})"
    return description if isinstance(description, str) else ""


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
        raise PresetError(f"unknown preset {str(name_or_path)!r}; available: {', '.join(sorted(files))}")
    path = files[str(name_or_path)]
    return parse_preset(_read_toml(path), name=path.stem, source=path)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as error:
        raise PresetError(f"{path}: not valid TOML ({error}); fix the syntax at that line") from None
    except OSError as error:
        raise PresetError(f"{path}: cannot be read ({error.strerror})") from None


# ---------------------------------------------------------------------------------------------- validation

_SECTIONS: dict[str, type] = {
    "model": ModelSection,
    "stream": StreamSection,
    "filter": FilterSection,
    "camera": CameraSection,
    "output": OutputSection,
    "hotkeys": HotkeysSection,
    "obs": ObsSection,
    "osc": OscSection,
}
_TOP_LEVEL_KEYS = ("description", *_SECTIONS, "prompts")
_Fail = Callable[[str, str], PresetError]  # (dotted key, message) -> the one-line error naming the file


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
        raise fail("description", f"must be a string, got {_type_name(description)}")
    sections = {key: _build_section(cls, data.get(key, {}), key, fail) for key, cls in _SECTIONS.items()}
    prompts = _build_prompts(data.get("prompts"), fail)
    preset = Preset(name=name, description=description, prompts=prompts, source_path=source, **sections)
    _check_stream(preset.stream, fail)
    _check_hotkeys(preset, fail)
    for scene, prompt_name in preset.obs.scenes.items():
        if prompt_name not in preset.prompt_names:
            raise fail(f"obs.scenes.{scene}", f"names prompt {prompt_name!r}, which is not one of the preset's "
                       f"prompts ({', '.join(preset.prompt_names)})")
    return preset


def _reject_unknown(table: Mapping[str, Any], allowed: typing.Iterable[str], prefix: str, fail: _Fail) -> None:
    allowed = tuple(allowed)
    for key in table:
        if key not in allowed:
            raise fail(f"{prefix}{key}", f"unknown key; allowed here: {', '.join(allowed)}")


def _build_section(cls: type, table: Any, dotted: str, fail: _Fail) -> Any:
    if not isinstance(table, Mapping):
        raise fail(dotted, f"must be a table ([{dotted}]), got {_type_name(table)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    _reject_unknown(table, fields, f"{dotted}.", fail)
    hints = typing.get_type_hints(cls)
    values = {key: _coerce(value, hints[key], fields[key].metadata, f"{dotted}.{key}", fail)
              for key, value in table.items()}
    return cls(**values)


def _coerce(value: Any, hint: Any, metadata: Mapping[str, Any], key: str, fail: _Fail) -> Any:
    """Check `value` against the field's type hint and range, returning the frozen form (tuples, proxies)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union or origin is types.UnionType:  # `X | None`: TOML has no null, so only X is possible
        hint = next(arg for arg in args if arg is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        if value not in args:
            raise fail(key, f"must be one of {', '.join(map(str, args))}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, list):
            raise fail(key, f"must be a list of {args[0].__name__}, got {_type_name(value)}")
        return tuple(_coerce(item, args[0], metadata, key, fail) for item in value)
    if origin is collections.abc.Mapping:
        if not isinstance(value, Mapping) or not all(isinstance(v, str) for v in value.values()):
            raise fail(key, f"must be a table of strings like {{ \"Scene\" = \"prompt name\" }}, got {value!r}")
        return types.MappingProxyType(dict(value))
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if hint is int and isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, hint) or (hint is not bool and isinstance(value, bool)):
        raise fail(key, f"must be {_article(hint)}, got {_type_name(value)} {value!r}")
    low, high = metadata.get("range", (None, None))
    if (low is not None and value < low) or (high is not None and value > high):
        raise fail(key, f"must be from {low} to {high}, got {value}")
    return value


def _build_prompts(raw: Any, fail: _Fail) -> tuple[PromptSpec, ...]:
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
            raise fail(f"{dotted}.hotkey", f"must be a string like \"<ctrl>+<alt>+1\", got {_type_name(hotkey)}")
        prompts.append(PromptSpec(name=entry["name"], text=entry["text"], hotkey=hotkey))
    return tuple(prompts)


def _check_stream(stream: StreamSection, fail: _Fail) -> None:
    if stream.t_index_list is not None and (stream.strength is not None or stream.steps is not None):
        raise fail("stream.t_index_list", "set either t_index_list or strength + steps, not both")
    if stream.steps is not None and stream.strength is None:
        raise fail("stream.steps", "steps needs strength too (e.g. strength = 0.5), or use t_index_list")
    try:
        StreamConfig(width=stream.width, height=stream.height, t_index_list=stream.resolved_t_index_list(),
                     frame_buffer_size=stream.frame_buffer, guidance=stream.guidance,
                     guidance_scale=stream.guidance_scale, **stream.solver_settings())
    except ConfigError as error:
        raise fail("stream", str(error)) from None


def _check_hotkeys(preset: Preset, fail: _Fail) -> None:
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


def _type_name(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a table"}.get(type(value), type(value).__name__)


def _article(hint: Any) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(hint, str(hint))
