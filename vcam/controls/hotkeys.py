"""Global hotkeys: key combinations typed anywhere on the desktop become commands on the queue.

pynput's `GlobalHotKeys` does the listening (the X RECORD extension on Linux, hooks on Windows, an event tap on
macOS). A hotkey backend is a convenience, never a requirement: where none can start (no X display, Wayland,
no accessibility permission) the control says so in one line and the show goes on with the tray, OBS or OSC.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from typing import TYPE_CHECKING, Callable, Mapping

from vcam.commands import Command, CommandQueue, SetPaused, SetSimilarityFilter, SwitchPrompt

if TYPE_CHECKING:  # presets validate their hotkeys with `parse_hotkey` below, so they import this module
    from vcam.presets import Preset

READY_TIMEOUT_S = 20.0  # generous: an X server and Python both starved by a busy machine can take seconds
STOP_TIMEOUT_S = 5.0  # a stop waits this long for the listener thread: shutdown must not wait as long as start-up
FALLBACK_ADVICE = "use the tray, OBS WebSocket or OSC instead"


class HotkeyError(ValueError):
    """A binding that is not a valid hotkey; the message shows the accepted syntax."""


def parse_hotkey(combo: str) -> frozenset[str]:
    """Validate a hotkey with pynput's own parser when a keyboard backend can load, else with its key table.

    pynput's `HotKey.parse` needs a platform backend, and on Linux that means a reachable X server; presets must
    still validate headless (CI, `vcam presets` over SSH), where the grammar is checked against pynput's
    platform-independent `Key` names instead. Returns a normalised set of key names to detect duplicates.
    """
    try:
        from pynput.keyboard import HotKey
    except ImportError:  # no keyboard backend here (e.g. no X display): same grammar, pynput's key names
        return _parse_hotkey_offline(combo)
    return frozenset(str(key) for key in HotKey.parse(combo))


# pynput's documented `Key` names: used when pynput cannot load its platform backend to tell us itself.
_NAMED_KEYS = frozenset(
    "alt alt_l alt_r alt_gr backspace caps_lock cmd cmd_l cmd_r ctrl ctrl_l ctrl_r delete down end enter esc "
    "home left page_down page_up right shift shift_l shift_r space tab up insert menu num_lock pause "
    "print_screen scroll_lock media_play_pause media_volume_mute media_volume_down media_volume_up "
    "media_previous media_next".split()
) | {f"f{number}" for number in range(1, 21)}


def _parse_hotkey_offline(combo: str) -> frozenset[str]:
    names: list[str] = []
    for part in _split_combo(combo):
        if len(part) == 1:
            names.append(part.lower())
        elif len(part) > 2 and part[0] == "<" and part[-1] == ">" and (
            part[1:-1].lower() in _NAMED_KEYS or part[1:-1].isdigit()
        ):
            names.append(part.lower())
        else:
            raise ValueError(part)
    if len(set(names)) != len(names):
        raise ValueError(combo)
    return frozenset(names)


def _split_combo(combo: str) -> list[str]:
    """Split on '+' separators while allowing '+' itself as a key (as in "<ctrl>++")."""
    parts, start = [], 0
    for index, char in enumerate(combo):
        if char == "+" and index != start:
            parts.append(combo[start:index])
            start = index + 1
    if start == len(combo):
        raise ValueError(combo)
    parts.append(combo[start:])
    return parts



def bindings_from_preset(preset: Preset) -> dict[str, Command]:
    """The preset's combinations: one per prompt (Ctrl+Alt+1..9 by default), next, previous, pause, filter."""
    bindings: dict[str, Command] = {}
    for prompt in preset.prompts:
        if prompt.hotkey:
            bindings[prompt.hotkey] = SwitchPrompt(name=prompt.name)
    actions: dict[str, Command] = {
        preset.hotkeys.next: SwitchPrompt(step=1),
        preset.hotkeys.previous: SwitchPrompt(step=-1),
        preset.hotkeys.pause: SetPaused(paused=None),
        preset.hotkeys.filter: SetSimilarityFilter(enabled=None),
    }
    bindings.update({combo: command for combo, command in actions.items() if combo})
    return bindings


def hotkey_backend_problem() -> str | None:
    """Why global hotkeys cannot work in this session, as one line, or None when they can.

    Checked before touching pynput because its X backend fails inside its listener thread (a traceback, and a
    `wait()` that never returns) when the display is missing; asking first turns that into a sentence.
    """
    chosen_backend = os.environ.get("PYNPUT_BACKEND_KEYBOARD") or os.environ.get("PYNPUT_BACKEND")
    if sys.platform in ("win32", "darwin") or chosen_backend:  # pynput's own checks apply there
        return None
    display = os.environ.get("DISPLAY", "")
    if not display:
        if os.environ.get("WAYLAND_DISPLAY"):
            return ("hotkeys unavailable: Wayland does not let programs read global keys (no X DISPLAY); "
                    f"{FALLBACK_ADVICE}")
        return f"hotkeys unavailable: no X display (DISPLAY is not set); {FALLBACK_ADVICE}"
    try:
        from Xlib import display as xdisplay  # noqa: F401  (imported here so a missing one is said, not raised)
    except ImportError:
        return f"hotkeys unavailable: python-xlib is missing (pip install python-xlib); {FALLBACK_ADVICE}"
    # Xlib has no connect timeout, and an X server that accepts but never answers would hang the caller.
    answer: list[str | None] = []
    asking = threading.Thread(target=lambda: answer.append(_x_display_problem(display)), daemon=True,
                              name="hotkeys-check")
    asking.start()
    asking.join(READY_TIMEOUT_S)
    if not answer:
        return (f"hotkeys unavailable: X display {display} did not answer within {READY_TIMEOUT_S:g} s; "
                f"{FALLBACK_ADVICE}")
    return answer[0]


def _x_display_problem(display: str) -> str | None:
    """One line if X display `display` cannot be opened or lacks RECORD (what pynput listens with), else None."""
    from Xlib import display as xdisplay
    from Xlib.error import DisplayError

    try:
        connection = xdisplay.Display(display)
    except (DisplayError, OSError) as error:
        return f"hotkeys unavailable: cannot open X display {display} ({error}); {FALLBACK_ADVICE}"
    try:
        if not connection.has_extension("RECORD"):
            return f"hotkeys unavailable: X display {display} lacks the RECORD extension; {FALLBACK_ADVICE}"
    finally:
        connection.close()
    return None


class HotkeyControl:
    """Listens for `bindings` (pynput syntax -> command) and puts each command on `queue` with origin "hotkey".

    `on_status` receives one-line messages (listening, or why not); it is the only way this control talks to
    the user, so the service decides whether that is a log line or the console.
    """

    def __init__(
        self,
        bindings: Mapping[str, Command],
        queue: CommandQueue,
        on_status: Callable[[str], None] = print,
    ) -> None:
        for combo in bindings:
            try:
                parse_hotkey(combo)
            except ValueError:
                raise HotkeyError(
                    f"{combo!r} is not a valid hotkey; write keys joined by '+' with modifiers and named keys in "
                    "angle brackets, e.g. \"<ctrl>+<alt>+p\""
                ) from None
        self._bindings = dict(bindings)
        self._queue = queue
        self._on_status = on_status
        self._listener = None  # pynput.keyboard.GlobalHotKeys while running

    @property
    def running(self) -> bool:
        return self._listener is not None and self._listener.is_alive()

    def start(self) -> bool:
        """Start listening; False (after one status line) where no hotkey backend can run here."""
        if self._listener is not None:
            return self.running
        problem = hotkey_backend_problem()
        if problem is None:
            problem = self._start_listener()
        if problem is not None:
            self._on_status(problem)
            return False
        caveat = ""
        if os.environ.get("WAYLAND_DISPLAY") and sys.platform not in ("win32", "darwin"):
            caveat = " (Wayland session: keys are seen only while an X11/XWayland window has focus)"
        self._on_status(f"hotkeys: listening for {len(self._bindings)} combinations{caveat}")
        return True

    def _start_listener(self) -> str | None:
        try:
            from pynput import keyboard
        except ImportError as error:
            reason = str(error).splitlines()[0]
            return f"hotkeys unavailable: pynput cannot load a keyboard backend ({reason}); {FALLBACK_ADVICE}"
        listener = keyboard.GlobalHotKeys(
            {combo: self._sender(command) for combo, command in self._bindings.items()}
        )
        listener.start()
        # pynput's wait() blocks forever if the backend dies before it is ready, so wait for it from a helper.
        ready = threading.Event()
        threading.Thread(target=lambda: (listener.wait(), ready.set()), daemon=True, name="hotkeys-ready").start()
        if not ready.wait(READY_TIMEOUT_S) or not listener.is_alive():
            # pynput's stop() itself waits for readiness when the X context does not exist yet: never on this
            # thread, or a backend that hangs before it is ready would hang the service's start-up with it.
            threading.Thread(target=_stop_listener, args=(listener,), daemon=True, name="hotkeys-abandon").start()
            return f"hotkeys unavailable: the keyboard listener did not start; {FALLBACK_ADVICE}"
        self._listener = listener
        return None

    def _sender(self, command: Command) -> Callable[[], None]:
        def send() -> None:
            self._queue.put(command, "hotkey")

        return send

    def stop(self) -> None:
        """Stop listening; safe to call twice or when `start()` found no backend."""
        listener, self._listener = self._listener, None
        if listener is None:
            return
        _stop_listener(listener)


def _stop_listener(listener: threading.Thread) -> None:
    """Stop pynput's listener and wait up to STOP_TIMEOUT_S for its thread to end."""
    listener.stop()
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while listener.is_alive() and time.monotonic() < deadline:
        # Repeated: a stop right after start() can disable the recording before the listener thread has
        # enabled it (pynput marks itself ready first), and that thread would then wait for the next key.
        _end_x_recording(listener)
        listener.join(timeout=0.1)


def _end_x_recording(listener: object) -> None:
    """Make pynput's X listener thread end now rather than at the next key event.

    Its `stop()` queues the RECORD disable request on the connection its own thread is blocked reading, so the
    request only leaves when another event arrives. Disabling the same server-side context from a second
    connection delivers the end-of-data reply immediately. Other backends have no `_context` and need nothing.
    """
    context = getattr(listener, "_context", None)
    display = os.environ.get("DISPLAY")
    if context is None or not display or sys.platform in ("win32", "darwin"):
        return
    from Xlib import display as xdisplay
    from Xlib.error import DisplayError

    try:
        connection = xdisplay.Display(display)
    except (DisplayError, OSError):  # the server is gone: the listener thread ends on the broken connection itself
        return
    try:
        connection.record_disable_context(context)
        connection.flush()
    finally:
        connection.close()
