"""The user's default preset: the one `vcam run`, `vcam doctor` and `vcam service install` use without --preset.

It is one line of text in its own file beside the user presets (`~/.config/vcam/default-preset` on Linux), so
choosing it never rewrites a preset, and a hand edit is as good as `vcam presets default NAME`. Without the file the
default is vcam's own (`BUILTIN_DEFAULT_PRESET`). The name is checked when it is set and again when it is used: a
preset removed since then is one line naming the file and the fix, never a run of some other preset.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from vcam.presets import PresetError, load_preset

# A real model when it is on this machine (else `vcam run` falls back to `tiny`).
BUILTIN_DEFAULT_PRESET = "sd-turbo-1step"
MAX_FILE_BYTES = 4096  # a preset name or path; anything bigger is not this file
CHANGE_HINT = "`vcam presets default NAME` sets another (`vcam presets` lists them)"


@dataclass(frozen=True)
class DefaultPreset:
    """The preset used when none is named, and the file that chose it (None: vcam's built-in default)."""

    name: str
    set_in: Path | None = None

    @property
    def is_users(self) -> bool:
        return self.set_in is not None

    def origin(self) -> str:
        """Where the choice comes from, for the one line that says which preset runs."""
        if self.set_in is None:
            return "vcam's built-in default; `vcam presets default NAME` sets yours"
        return f"your default, set in {self.set_in}"


def default_preset_file() -> Path:
    """Beside the user presets folder (`vcam.presets.user_preset_dir`), in the platform's user config dir."""
    return Path(platformdirs.user_config_dir("vcam")) / "default-preset"


def read_default_preset() -> DefaultPreset:
    """The stored choice as written (not checked against the presets: `default_preset` does that)."""
    path = default_preset_file()
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        return DefaultPreset(BUILTIN_DEFAULT_PRESET)
    except OSError as error:
        raise PresetError(f"{path}: cannot be read ({error.strerror}); fix its permissions or {CHANGE_HINT}") from None
    try:
        name = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        name = ""
    if not name or "\n" in name or len(data) > MAX_FILE_BYTES:
        raise PresetError(f"{path}: should hold one preset name or .toml path; {CHANGE_HINT}")
    return DefaultPreset(name, path)


def default_preset() -> DefaultPreset:
    """The stored choice, checked to load: a preset deleted or broken since it was chosen is one line naming the
    file that chose it."""
    chosen = read_default_preset()
    try:
        load_preset(chosen.name)
    except PresetError as error:
        if chosen.set_in is None:
            raise
        raise PresetError(f"your default preset {chosen.name!r} (set in {chosen.set_in}) cannot be used: {error}; "
                          f"{CHANGE_HINT}") from None
    return chosen


def set_default_preset(name: str) -> DefaultPreset:
    """Check that `name` (a preset name or a .toml path, kept absolute) loads, then store it. The file is replaced
    in one step (written beside it, then renamed), so an interrupted write leaves the previous choice."""
    path_like = name.endswith(".toml") or "/" in name or os.sep in name
    stored = str(Path(name).expanduser().resolve()) if path_like else name
    try:
        load_preset(stored)
    except PresetError as error:
        raise PresetError(f"{error}; the default preset is unchanged") from None
    target = default_preset_file()
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=".default-preset.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(stored + "\n")
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return DefaultPreset(stored, target)
