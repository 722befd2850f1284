"""The ways a user or the system asks `vcam run` to stop, turned into one callback.

POSIX: SIGINT (Ctrl+C), SIGTERM (`kill`, `systemctl stop`) and SIGHUP (the terminal closed, an SSH session
dropped). Without a handler SIGHUP kills the process at once and a recording is left without its index.

Windows: Ctrl+C and Ctrl+Break arrive as SIGINT and SIGBREAK (Python's own console handler turns them into
signals). Closing the console window, logging off and shutting down do not: they reach only handlers registered
with `SetConsoleCtrlHandler`, which Windows runs on a thread of its own and ends the process as soon as the handler
returns (or after about 5 s). Our handler therefore asks for the stop and waits until the service says everything
is finalised before returning. (This Windows path is written to Microsoft's documentation of HandlerRoutine; it has
not run here: there is no Windows machine in the test set-up.)

The callback gets the signal's name and runs on the main thread (POSIX signals, Ctrl+C, Ctrl+Break) or on the
console-control thread (console close): it must only set flags, never block on the thread that is running.
"""
from __future__ import annotations

import signal
import sys
import threading
from typing import Any, Callable

# Windows console control events (wincon.h) that Python does not turn into signals.
CTRL_CLOSE_EVENT = 2
CTRL_LOGOFF_EVENT = 5
CTRL_SHUTDOWN_EVENT = 6
CONSOLE_EVENT_NAMES = {CTRL_CLOSE_EVENT: "console close", CTRL_LOGOFF_EVENT: "log-off", CTRL_SHUTDOWN_EVENT: "shutdown"}
CONSOLE_CLOSE_WAIT_SECONDS = 4.5  # Windows ends the process about 5 s after a close event, handler or not


def stop_signal_numbers() -> list[signal.Signals]:
    """The signals that mean "stop cleanly" on this platform (each one that exists here)."""
    names = ("SIGINT", "SIGTERM", "SIGHUP", "SIGBREAK")
    return [getattr(signal, name) for name in names if hasattr(signal, name)]


class StopSignals:
    """Routes every stop request to `on_stop(name)` while installed; `restore()` puts the old handlers back.

    `finalised` is set by the owner once the devices are released and the files written: a Windows console close
    waits for it (at most CONSOLE_CLOSE_WAIT_SECONDS), since returning from that handler ends the process.
    """

    def __init__(self, on_stop: Callable[[str], None], finalised: threading.Event) -> None:
        self._on_stop = on_stop
        self._finalised = finalised
        self._previous: dict[signal.Signals, Any] = {}
        self._console_handler: Any = None  # the ctypes callback; must stay referenced while registered

    def install(self) -> bool:
        """Install the handlers; False (and nothing installed) when not on the main thread, where Python refuses
        signal handlers (an embedding application owns them then)."""
        if threading.current_thread() is not threading.main_thread():
            return False
        for number in stop_signal_numbers():
            self._previous[number] = signal.signal(number, self._on_signal)
        if sys.platform == "win32":
            self._install_console_handler()
        return True

    def restore(self) -> None:
        for number, previous in self._previous.items():
            signal.signal(number, previous)
        self._previous.clear()
        if self._console_handler is not None:
            import ctypes

            ctypes.windll.kernel32.SetConsoleCtrlHandler(self._console_handler, False)  # type: ignore[attr-defined]
            self._console_handler = None

    @property
    def installed(self) -> list[signal.Signals]:
        return list(self._previous)

    def _on_signal(self, number: int, _frame: object) -> None:
        self._on_stop(signal.Signals(number).name)

    def _install_console_handler(self) -> None:
        import ctypes
        from ctypes import wintypes

        handler_type = ctypes.WINFUNCTYPE(wintypes.BOOL, wintypes.DWORD)

        def on_console_event(event: int) -> bool:
            name = CONSOLE_EVENT_NAMES.get(event)
            if name is None:
                return False  # Ctrl+C / Ctrl+Break: Python's own handler raises SIGINT / SIGBREAK
            self._on_stop(name)
            self._finalised.wait(CONSOLE_CLOSE_WAIT_SECONDS)
            return True

        self._console_handler = handler_type(on_console_event)
        if not ctypes.windll.kernel32.SetConsoleCtrlHandler(self._console_handler, True):  # type: ignore[attr-defined]
            self._console_handler = None
