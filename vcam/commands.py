"""The one command set shared by every control (hotkeys, tray, OBS WebSocket, OSC, CLI).

Controls never touch the stream: they put commands on a `CommandQueue` and the service applies them between
frames, so a command can never land in the middle of a UNet call.
"""
from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any, Literal, Union

log = logging.getLogger("vcam")

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


URGENT_COMMANDS = (Quit, SetPaused)  # taken before anything queued earlier: a panic button must never wait
MAX_PENDING_PROMPT_TEXTS = 4  # each costs a text-encoder call; older ones are superseded by the newer anyway
MAX_PENDING_COMMANDS = 256  # a flood from a network control never grows memory without bound
MAX_PENDING_PAUSES = 8  # beyond this, pending pause / resume / toggles collapse to what they add up to


class CommandQueue:
    """Thread-safe queue from controls to the service, which takes commands between frames.

    Whatever arrived before, a `quit` or `pause`/`resume` is taken next: urgent commands overtake the rest (in
    their own order). The queue is bounded: beyond `MAX_PENDING_PROMPT_TEXTS` free texts the oldest text is
    dropped (a newer prompt supersedes it, and each would cost a text-encoder call), and beyond
    `MAX_PENDING_COMMANDS` the oldest ordinary command is dropped. Urgent commands are bounded too, without
    losing what they mean: a quit already pending makes another one a repeat, and beyond `MAX_PENDING_PAUSES`
    the pending pause / resume / toggle commands collapse to their net effect (the last explicit one, then one
    toggle if an odd number followed it). Any of these is said once per queue on the `vcam` log. Commands of
    the same kind keep their order.
    """

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._urgent: deque[tuple[int, QueuedCommand]] = deque()  # (arrival number, command)
        self._ordinary: deque[tuple[int, QueuedCommand]] = deque()
        self._arrivals = 0
        self._dropped = 0

    def put(self, command: Command, origin: str) -> None:
        with self._changed:
            self._arrivals += 1
            entry = (self._arrivals, QueuedCommand(command, origin))
            if isinstance(command, Quit) and any(isinstance(queued.command, Quit) for _, queued in self._urgent):
                self._count_dropped("a quit was already waiting")
            elif isinstance(command, URGENT_COMMANDS):
                self._urgent.append(entry)
                self._collapse_pauses()
            else:
                if isinstance(command, SetPromptText):
                    texts = [queued for queued in self._ordinary if isinstance(queued[1].command, SetPromptText)]
                    if len(texts) >= MAX_PENDING_PROMPT_TEXTS:
                        self._drop(texts[0], "older prompt texts were superseded by newer ones")
                if len(self._ordinary) >= MAX_PENDING_COMMANDS:
                    self._drop(self._ordinary[0], f"more than {MAX_PENDING_COMMANDS} commands were waiting")
                self._ordinary.append(entry)
            self._changed.notify()

    def _collapse_pauses(self) -> None:
        """Pending pause commands beyond `MAX_PENDING_PAUSES` -> their net effect, in arrival order."""
        pauses = [entry for entry in self._urgent if isinstance(entry[1].command, SetPaused)]
        if len(pauses) <= MAX_PENDING_PAUSES:
            return
        explicit = [i for i, (_, queued) in enumerate(pauses) if queued.command.paused is not None]
        start = explicit[-1] + 1 if explicit else 0
        toggles = pauses[start:]
        kept = [pauses[explicit[-1]]] if explicit else []
        kept += toggles[-1:] if len(toggles) % 2 else []
        for entry in pauses:
            if entry not in kept:
                self._urgent.remove(entry)
                self._count_dropped(f"more than {MAX_PENDING_PAUSES} pause commands were waiting")

    def _drop(self, entry: tuple[int, QueuedCommand], why: str) -> None:
        self._ordinary.remove(entry)
        self._count_dropped(why)

    def _count_dropped(self, why: str) -> None:
        self._dropped += 1
        if self._dropped == 1:
            log.warning("commands are arriving faster than they can be applied: %s, so the oldest are dropped "
                        "(said once)", why)

    def __len__(self) -> int:
        """How many commands are waiting."""
        with self._changed:
            return len(self._urgent) + len(self._ordinary)

    @property
    def dropped(self) -> int:
        """How many commands were dropped because the queue was full (superseded prompt texts, repeated quits and
        collapsed pause commands included)."""
        return self._dropped

    def drain(self) -> list[QueuedCommand]:
        """Take everything pending, in the order it arrived, and empty the queue. The service takes commands with
        `get` (urgent first); this is how a test reads what a control sent, in the control's own order."""
        with self._changed:
            entries = sorted([*self._urgent, *self._ordinary], key=lambda entry: entry[0])
            self._urgent.clear()
            self._ordinary.clear()
            return [item for _, item in entries]

    def get(self, timeout: float | None = None) -> QueuedCommand | None:
        """The next command (urgent ones first), waiting up to `timeout` seconds; None if none came."""
        with self._changed:
            self._changed.wait_for(lambda: self._urgent or self._ordinary, timeout=timeout)
            for pending in (self._urgent, self._ordinary):
                if pending:
                    return pending.popleft()[1]
            return None
