"""`vcam presets` (list them) and `vcam presets default [NAME]` (show or set the user's default preset)."""
from __future__ import annotations

import argparse

from vcam.default_preset import DefaultPreset, default_preset, set_default_preset
from vcam.presets import PresetError, list_presets, user_preset_dir

# Who reads the default: said when it is set, so the user knows what the choice changes.
DEFAULT_USERS = "`vcam run`, `vcam doctor` and a `vcam service install` made without --preset (from its next start)"


def add_presets_parser(sub: argparse._SubParsersAction) -> None:
    presets = sub.add_parser("presets", help="list the shipped and user presets; `presets default NAME` sets yours")
    actions = presets.add_subparsers(dest="presets_action", metavar="ACTION")
    default = actions.add_parser("default", help="show, or set, the preset used when no --preset is given")
    default.add_argument("name", nargs="?", metavar="NAME|FILE", help="a preset name (see `vcam presets`) or a .toml")


def _default_line(chosen: DefaultPreset) -> str:
    return f"default preset: {chosen.name} ({chosen.origin()})"


def _list() -> int:
    for info in list_presets():
        print(f"{info.name:<20} {info.origin:<8} {info.description}")
    print(f"(user presets: {user_preset_dir()})")
    try:
        print(_default_line(default_preset()))  # checked: a default deleted since it was chosen is said here too
    except PresetError as error:  # the listing still helps to choose another
        print(f"default preset: {error}")
    return 0


def run_presets_action(args: argparse.Namespace) -> int:
    """Dispatch `vcam presets [default [NAME]]`."""
    if args.presets_action is None:
        return _list()
    if args.name is None:
        print(_default_line(default_preset()))  # one line (exit 2) when it no longer loads, as `vcam run` says it
        return 0
    chosen = set_default_preset(args.name)
    print(f"vcam: default preset is now {chosen.name} (in {chosen.set_in}); {DEFAULT_USERS} use it")
    return 0
