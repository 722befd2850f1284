"""Command-line options shared by `vcam run` and `vcam bench`, generated from the settings schema (`vcam.sections`).

Each user field of a section becomes one option: `--{prefix}{field-name}` unless the field names its own, typed
from its hint (a `Literal` lists its choices, a bool is a `--x/--no-x` switch, a tuple of strings repeats), with
the field's help, preset key and default in `--help`. Every option defaults to None ("not given"): the value then
comes from the preset, and failing that from the dataclass defaults; `given_values` hands the merge in
`vcam.settings` exactly what was typed, field by field. A field's previous option name (`old_cli`) still works
for one release and leaves a notice in `args.notices`.

`options_table` and `presets_table` render the README's tables from the same data; `python -m vcam.options
README.md` writes them between their markers (tests/test_schema.py keeps README, `--help` and schema equal).
"""
from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any

from vcam.sections import GROUPS, Group, choices_of, field_help, optional_inner, user_fields

NOTICES = "notices"  # the namespace attribute holding notices about old spellings, said once by the CLI


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.replace(" ", "").split(",") if part)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers such as 32,45, got {text!r}")
    if not values:
        raise argparse.ArgumentTypeError("expected at least one index, such as 32,45")
    return values


def _note(namespace: argparse.Namespace, text: str) -> None:
    setattr(namespace, NOTICES, (*getattr(namespace, NOTICES, ()), text))


class SettingAction(argparse.Action):
    """Stores one setting's value under `group.field`; checks a `Literal`'s choices, repeats a tuple of strings,
    and notes a previous spelling of the option. `--guidance` with a number is the old `--guidance` (the scale)."""

    def __init__(self, option_strings: list[str], dest: str, *, choices_: tuple[str, ...] = (), repeat: bool = False,
                 const_value: Any = None, current: str = "", **kw: Any) -> None:
        self.choices_, self.repeat, self.const_value, self.current = choices_, repeat, const_value, current
        super().__init__(option_strings, dest, nargs=0 if const_value is not None else None, **kw)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, value: Any,
                 option_string: str | None = None) -> None:
        if option_string != self.current:
            _note(namespace, f"{option_string} is now {self.current}; the old spelling works until the next release")
        if self.const_value is not None:
            value = self.const_value
        elif self.choices_ and value not in self.choices_:
            if self.current == "--guidance" and _is_number(value):
                _note(namespace, f"--guidance {value} (a number) is now --guidance-scale {value}; --guidance takes "
                      f"the mode ({', '.join(self.choices_)}); the old meaning works until the next release")
                setattr(namespace, "stream.guidance_scale", float(value))
                return
            raise argparse.ArgumentError(self, f"invalid choice {value!r} (choose from {', '.join(self.choices_)})")
        elif self.repeat:
            value = (*(getattr(namespace, self.dest, None) or ()), value)
        setattr(namespace, self.dest, value)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def option_name(group: Group, f: dataclasses.Field) -> str:
    return f.metadata.get("cli") or f"--{group.prefix}{f.name.replace('_', '-')}"


def _add_field(parser: argparse._ArgumentGroup, group: Group, f: dataclasses.Field, hint: Any) -> None:
    name, dest = option_name(group, f), f"{group.key}.{f.name}"
    in_presets = f.metadata.get("preset", True)
    where = f"preset {group.key}.{f.name}, " if in_presets else ""
    default = _shown(f.default) if in_presets and f.default is not dataclasses.MISSING else ""
    shown = f"{where}default {default}" if default else where.rstrip(", ")
    help_text = field_help(f, hint) + (f" ({shown})" if shown else "")
    inner = optional_inner(hint)
    if inner is bool:
        parser.add_argument(name, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        return
    kwargs: dict[str, Any] = dict(dest=dest, action=SettingAction, current=name, default=None)
    if f.metadata.get("flag") is not None:
        kwargs.update(const_value=f.metadata["flag"])
    elif typing.get_origin(inner) is tuple:
        repeat = typing.get_args(inner)[0] is str
        kwargs.update(repeat=repeat, type=None if repeat else _int_list, metavar=f.metadata.get("metavar") or "LIST")
    else:
        choices = choices_of(hint)
        metavar = f.metadata.get("metavar") or ("{" + ",".join(choices) + "}" if choices else
                                                {int: "N", float: "X"}.get(inner, "TEXT"))
        kwargs.update(choices_=choices, type=None if choices else inner, metavar=metavar)
    parser.add_argument(name, help=help_text, **kwargs)
    if f.metadata.get("old_cli"):  # the previous spelling: still accepted, no longer advertised
        parser.add_argument(f.metadata["old_cli"], help=argparse.SUPPRESS, **kwargs)


def add_stream_options(parser: argparse.ArgumentParser) -> None:
    """Every setting of every section that has a `--help` group, plus the run-level --preset, --output-size and
    --frames; old option spellings are accepted but hidden."""
    parser.set_defaults(**{NOTICES: ()})
    for group in GROUPS:
        if not group.title:
            continue
        g = _group(parser, group.title)
        if group.key == "model":
            g.add_argument("--preset", metavar="NAME|FILE",
                           help="a preset name (see `vcam presets`) or a .toml file; run: your default (`vcam presets default`), bench: tiny")
        for cls in group.classes:
            for f, hint in user_fields(cls, where="cli"):
                _add_field(g, group, f, hint)
        if group.key == "output":
            g.add_argument("--output-size", metavar="WIDTHxHEIGHT",
                           help="virtual camera size, e.g. 1280x720 (sets --output-width and --output-height)")
            g.add_argument("--frames", type=int, metavar="N", help="stop after this many output frames")


def add_run_options(parser: argparse.ArgumentParser, title: str, keys: tuple[str, ...]) -> None:
    """The settings of the sections `keys` that only `vcam run` has on its command line (`--obs`, `--osc`: what
    turns a control on; their other keys are preset only), in the `--help` group `title`. Generated from the
    schema like every other option and merged with the preset by `vcam.settings.resolve_settings`; a command
    without them keeps the preset's value."""
    g = _group(parser, title)
    for group in GROUPS:
        if group.key in keys:
            for cls in group.classes:
                for f, hint in user_fields(cls, where="cli"):
                    _add_field(g, group, f, hint)


def _shown(value: Any) -> str:
    """A default as the user would type it ("" for none): tuples as 32,45."""
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return "" if value is None else str(value)


def _group(parser: argparse.ArgumentParser, title: str) -> argparse._ArgumentGroup:
    for existing in parser._action_groups:  # argparse keeps its groups here; reuse one title, never repeat it
        if existing.title == title:
            return existing
    return parser.add_argument_group(title)


def given_values(args: argparse.Namespace, group: Group, cls: type) -> dict[str, Any]:
    """The fields of `cls` the command line gave (the ones left None were not typed)."""
    values = {}
    for f, _ in user_fields(cls, where="cli"):
        value = getattr(args, f"{group.key}.{f.name}", None)
        if value is not None:
            values[f.name] = value
    return values


# ------------------------------------------------------------------------------------------------ README tables


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _invocation(action: argparse.Action) -> str:
    if action.nargs == 0:
        return " / ".join(action.option_strings)
    metavar = action.metavar or action.dest.upper()
    return f"{action.option_strings[0]} {metavar}"


def options_table(parsers: dict[str, argparse.ArgumentParser]) -> str:
    """The README's options table: every option of `run` (groups in `--help` order), then what `bench` adds."""
    rows = ["| option | meaning |", "| --- | --- |"]
    seen: set[str] = set()
    for command, parser in parsers.items():
        for group in parser._action_groups:
            actions = [a for a in group._group_actions if a.option_strings and a.help != argparse.SUPPRESS
                       and not isinstance(a, argparse._HelpAction) and a.option_strings[0] not in seen]
            if not actions:
                continue
            title = group.title if command == "run" else f"{command} only: {group.title}"
            rows.append(f"| **{_cell(title)}** | |")
            for action in actions:
                seen.add(action.option_strings[0])
                rows.append(f"| `{_cell(_invocation(action))}` | {_cell(action.help or '')} |")
    return "\n".join(rows)


def presets_table() -> str:
    """The README's presets table: every section's keys with their defaults written as TOML, then what the
    section is for (the first line of its dataclass's docstring)."""
    rows = ["| section | keys (default) |", "| --- | --- |", "| top | `description` |"]
    for group in GROUPS:
        keys = []
        for cls in group.classes:
            for f, hint in user_fields(cls):
                default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
                choices = choices_of(hint)
                if choices:
                    shown = " \\| ".join(choices) + f"; {default}"
                else:
                    shown = "not set" if default is None else f"`{_cell(_toml(default))}`"
                keys.append(f"`{f.name}` ({shown})")
        about = (group.classes[0].__doc__ or "").strip().splitlines()[0]
        rows.append(f"| `[{group.key}]` | {', '.join(keys)}. {_cell(about)} |")
    rows.append("| `[[prompts]]` | `name` (unique), `text`, `hotkey` (`<ctrl>+<alt>+1`…`9` for the first nine) |")
    return "\n".join(rows)


def _toml(value: Any) -> str:
    """A default as it would be written in a preset file."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    if isinstance(value, typing.Mapping):
        return "{ " + ", ".join(f"{_toml(k)} = {_toml(v)}" for k, v in value.items()) + " }" if value else "{}"
    return str(value)


def rewrite_readme(path: str, write: bool = True) -> bool:
    """Put the generated tables between their markers in the README at `path`; True when it changed (with
    `write=False`: when it would change, the file left as it is)."""
    from vcam.cli import build_parser  # the real parsers, so the table is what `--help` shows

    parsers = _subparsers(build_parser())
    text = original = open(path, encoding="utf-8").read()
    for name, table in (("options", options_table({"run": parsers["run"], "bench": parsers["bench"]})),
                        ("presets", presets_table())):
        begin, end = README_MARKERS[name]
        head, _, rest = text.partition(begin)
        _, _, tail = rest.partition(end)
        text = f"{head}{begin}\n{table}\n{end}{tail}"
    if text != original and write:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
    return text != original


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


README_MARKERS = {
    name: (f"<!-- {name} table: generated from the settings schema by `python -m vcam.options README.md` -->",
           f"<!-- end of the {name} table -->")
    for name in ("options", "presets")
}

if __name__ == "__main__":
    import sys

    # `python -m vcam.options [--check] [README.md]`: rewrite the tables (exit 0 either way, the line says which),
    # or with --check only compare them (exit 1 when they differ: the README must be regenerated).
    check = "--check" in sys.argv[1:]
    paths = [arg for arg in sys.argv[1:] if arg != "--check"]
    readme = paths[0] if paths else "README.md"
    differs = rewrite_readme(readme, write=not check)
    if check:
        fix = f"differ from the schema: run python -m vcam.options {readme}"
        print(f"{readme}: tables {fix if differs else 'match the schema'}")
        sys.exit(1 if differs else 0)
    print(f"{readme}: tables {'rewritten from' if differs else 'already match'} the schema")
