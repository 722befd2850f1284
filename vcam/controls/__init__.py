"""Controls turn outside input (hotkeys, tray, OBS WebSocket, OSC) into commands on the `CommandQueue`.

Every control is a small class with `start()` / `stop()`; it never touches the stream and never raises for bad
input. What goes wrong is reported through an `on_status(line)` callback as one short line, because the service
prints these lines next to the video and a traceback there helps nobody. The helpers here are the parts every
control shares; submodules are not imported here so that a control's dependency (Qt, pynput, obsws-python,
python-osc) is only loaded when that control is used.
"""
from __future__ import annotations

from typing import Callable, Iterable

from vcam.commands import BlendToPrompt, Command, CommandError, SwitchPrompt

StatusCallback = Callable[[str], None]

MAX_STATUS_CHARS = 300  # a status line must fit a terminal line or two, whatever a sender stuffed into a payload


class ControlConfigError(ValueError):
    """A control setting that cannot work (port out of range, scene mapped to an unknown prompt); names the fix."""


def one_line(message: str, limit: int = MAX_STATUS_CHARS) -> str:
    """Collapse whitespace (newlines included) and cut to `limit` characters, marking the cut: the one helper for
    a line a sender, a file or a listing could otherwise flood the terminal with (controls, presets)."""
    flat = " ".join(str(message).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def check_known_prompt(command: Command, known_prompts: Iterable[str]) -> Command:
    """Refuse a command naming a prompt the preset does not have; no known prompts means "don't check".

    Checking here, where the input arrives, lets the control answer the sender at once instead of the service
    failing later and far from the cause.
    """
    names = tuple(known_prompts)
    if names and isinstance(command, (SwitchPrompt, BlendToPrompt)) and command.name is not None:
        if command.name not in names:
            raise CommandError(f"unknown prompt {command.name!r}; the preset has: {', '.join(names)}")
    return command


def check_port(port: int, what: str, allow_any: bool = False) -> None:
    """Ports are user settings (preset / CLI); a bad one must fail at start with the setting named.

    `allow_any` admits 0 ("any free port"), which only makes sense for a port we listen on.
    """
    if isinstance(port, bool) or not isinstance(port, int) or not (0 if allow_any else 1) <= port <= 65535:
        raise ControlConfigError(f"{what} port must be a whole number from 1 to 65535, got {port!r}")
