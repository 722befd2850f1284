"""The one command set shared by every control (hotkeys, tray, OBS WebSocket, OSC, CLI).

Controls never touch the stream: they put commands on a `CommandQueue` and the service applies them between
frames, so a command can never land in the middle of a UNet call.
"""
from __future__ import annotations

import queue
from dataclasses import dataclass
from typing import Any, Literal, Union

MAX_PROMPT_CHARS = 1000  # longer texts are refused rather than truncated silently by the tokenizer
MAX_BLEND_FRAMES = 600


class CommandError(ValueError):
    """A command that cannot be understood; the message says what the accepted form is."""


@dataclass(frozen=True)
class SwitchPrompt:
    """Switch to a preset prompt by name, or move `step` places in the preset's list (+1 next, -1 previous)."""

    name: str | None = None
    step: int = 0


@dataclass(frozen=True)
class SetPromptText:
    """Use a free text prompt (encoded once, then cached)."""

    text: str


@dataclass(frozen=True)
class BlendToPrompt:
    """Blend from the current prompt to a named one over `frames` frames."""

    name: str
    frames: int


@dataclass(frozen=True)
class SetPaused:
    """Pause (pass the camera through untouched) or resume; None toggles."""

    paused: bool | None = None


@dataclass(frozen=True)
class SetSimilarityFilter:
    """Turn the stochastic similarity filter on or off; None toggles."""

    enabled: bool | None = None


@dataclass(frozen=True)
class ReloadPreset:
    """Read the preset file again and apply what changed."""


@dataclass(frozen=True)
class Quit:
    """Stop the service: release the camera and the virtual camera."""


Command = Union[SwitchPrompt, SetPromptText, BlendToPrompt, SetPaused, SetSimilarityFilter, ReloadPreset, Quit]

COMMAND_NAMES = ("prompt", "next", "previous", "text", "blend", "pause", "resume", "filter", "reload", "quit")


def _flag(payload: dict[str, Any], key: str) -> bool | None:
    value = payload.get(key, "toggle")
    if value in (True, 1, "on", "true", "1"):
        return True
    if value in (False, 0, "off", "false", "0"):
        return False
    if value in (None, "toggle"):
        return None
    raise CommandError(f"'{key}' must be true, false or \"toggle\", got {value!r}")


def _text(payload: dict[str, Any], key: str) -> str:
    value = payload.get(key)
    if not isinstance(value, str) or not value.strip():
        raise CommandError(f"command '{payload.get('command')}' needs a non-empty string '{key}'")
    if len(value) > MAX_PROMPT_CHARS:
        raise CommandError(f"'{key}' is {len(value)} characters; at most {MAX_PROMPT_CHARS} are accepted")
    return value


def parse_command(payload: Any) -> Command:
    """Turn the JSON form used by OBS and scripts into a command.

    Forms: {"command": "prompt", "name": "anime"}, {"command": "next"}, {"command": "previous"},
    {"command": "text", "text": "..."}, {"command": "blend", "name": "anime", "frames": 30},
    {"command": "pause", "value": true|false|"toggle"}, {"command": "resume"},
    {"command": "filter", "value": true|false|"toggle"}, {"command": "reload"}, {"command": "quit"}.
    """
    if not isinstance(payload, dict):
        raise CommandError(f"a command is a JSON object like {{\"command\": \"next\"}}, got {type(payload).__name__}")
    kind = payload.get("command")
    if kind == "prompt":
        return SwitchPrompt(name=_text(payload, "name"))
    if kind == "next":
        return SwitchPrompt(step=1)
    if kind == "previous":
        return SwitchPrompt(step=-1)
    if kind == "text":
        return SetPromptText(text=_text(payload, "text"))
    if kind == "blend":
        frames = payload.get("frames", 30)
        if not isinstance(frames, int) or isinstance(frames, bool) or not 0 <= frames <= MAX_BLEND_FRAMES:
            raise CommandError(f"'frames' must be a whole number from 0 to {MAX_BLEND_FRAMES}, got {frames!r}")
        return BlendToPrompt(name=_text(payload, "name"), frames=frames)
    if kind == "pause":
        return SetPaused(paused=_flag(payload, "value"))
    if kind == "resume":
        return SetPaused(paused=False)
    if kind == "filter":
        return SetSimilarityFilter(enabled=_flag(payload, "value"))
    if kind == "reload":
        return ReloadPreset()
    if kind == "quit":
        return Quit()
    raise CommandError(f"unknown command {kind!r}; known: {', '.join(COMMAND_NAMES)}")


@dataclass(frozen=True)
class QueuedCommand:
    command: Command
    origin: Literal["hotkey", "tray", "obs", "osc", "cli", "service"] | str


class CommandQueue:
    """Thread-safe queue from controls to the service; `drain()` is called between frames."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[QueuedCommand] = queue.SimpleQueue()

    def put(self, command: Command, origin: str) -> None:
        self._queue.put(QueuedCommand(command, origin))

    def drain(self) -> list[QueuedCommand]:
        items: list[QueuedCommand] = []
        while True:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                return items

    def get(self, timeout: float | None = None) -> QueuedCommand | None:
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
