"""`QtHost`: the one QApplication of the process, shared by the tray icon and the preview window.

Qt insists on a single application object whose event loop runs on the main thread, while vcam's work happens
on the source, inference and sink threads. The host owns that object, runs the loop, and gives other threads
one safe door in: `call_soon(fn)` queues `fn` onto the GUI thread.

Qt aborts the whole process (not an exception) when its platform plugin cannot reach a display, so whether Qt
can start is asked beforehand: cheaply from the environment, then by letting a child process try.
"""
from __future__ import annotations

import functools
import os
import subprocess
import sys
import threading
from typing import Callable

from PySide6.QtCore import QCoreApplication, QEventLoop, QObject, Qt, QTimer, Signal, Slot
from PySide6.QtWidgets import QApplication

PROBE_TIMEOUT_S = 60.0  # a child Python importing PySide6: seconds when idle, far more on a loaded machine
# Platform plugins that draw without any display server.
_HEADLESS_PLATFORMS = ("offscreen", "minimal", "vnc", "linuxfb", "eglfs", "minimalegl", "vkkhrdisplay")


class QtUnavailableError(RuntimeError):
    """Qt cannot start in this session; the one-line message says why and what to do."""


def qt_platform_problem() -> str | None:
    """Why Qt cannot open its platform plugin here, as one line, or None when it can (or already did)."""
    if QCoreApplication.instance() is not None:
        return None
    platform = os.environ.get("QT_QPA_PLATFORM", "").split(";")[0].split(":")[0]
    if sys.platform in ("win32", "darwin") or platform in _HEADLESS_PLATFORMS:
        return None
    if platform in ("", "xcb") and not os.environ.get("DISPLAY") and not (
        platform == "" and os.environ.get("WAYLAND_DISPLAY")
    ):
        return "no display for Qt: DISPLAY is not set (run inside a desktop session, or set QT_QPA_PLATFORM=offscreen)"
    if platform == "wayland" and not os.environ.get("WAYLAND_DISPLAY"):
        return "no display for Qt: QT_QPA_PLATFORM=wayland but WAYLAND_DISPLAY is not set"
    return _probe_in_child(os.environ.get("DISPLAY", ""), os.environ.get("WAYLAND_DISPLAY", ""), platform)


@functools.lru_cache(maxsize=8)
def _probe_in_child(display: str, wayland_display: str, platform: str) -> str | None:
    """Start a QGuiApplication in a child process: if the plugin aborts, only the child dies.

    Remembered per (display, platform) because callers ask `available()`, then `problem()` or `QtHost()`, and
    each probe costs a Python start-up; the arguments are only the cache key, the child inherits the environment.
    """
    script = "from PySide6.QtGui import QGuiApplication; QGuiApplication(['vcam-probe'])"
    try:
        result = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=PROBE_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        return f"Qt did not start within {PROBE_TIMEOUT_S:.0f} s (is the display server responding?)"
    if result.returncode == 0:
        return None
    lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
    reason = next((line for line in lines if "could not" in line.lower()), lines[0] if lines else "no output")
    return (f"Qt cannot start its platform plugin ({reason}); on Debian/Ubuntu install libxcb-cursor0, or set "
            "QT_QPA_PLATFORM=offscreen")


class QtHost:
    """Owns the QApplication; construct it on the main thread, then `run()` there until `quit()`."""

    def __init__(self, app_name: str = "vcam") -> None:
        problem = qt_platform_problem()
        if problem is not None:
            raise QtUnavailableError(problem)
        existing = QApplication.instance()
        self._owns_app = existing is None
        self.app = existing if existing is not None else QApplication([app_name])
        # A tray app must outlive its windows: closing the preview must not end the service.
        self.app.setQuitOnLastWindowClosed(False)
        self._gui_thread = threading.current_thread()
        self._invoker = _Invoker()

    @staticmethod
    def available() -> bool:
        """Whether a QtHost can be made here, without risking Qt aborting this process."""
        return qt_platform_problem() is None

    @staticmethod
    def problem() -> str | None:
        """The one-line reason when `available()` is False."""
        return qt_platform_problem()

    def is_gui_thread(self) -> bool:
        return threading.current_thread() is self._gui_thread

    def call_soon(self, fn: Callable[[], object]) -> None:
        """Run `fn` on the GUI thread at the next turn of the event loop; safe from any thread."""
        self._invoker.call.emit(fn)

    def run(self) -> int:
        """Run the event loop on this (the main) thread until `quit()`; returns Qt's exit code."""
        if not self.is_gui_thread():
            raise RuntimeError("QtHost.run() must be called on the thread that created the QtHost (the main thread)")
        return self.app.exec()

    def run_for(self, seconds: float) -> None:
        """Run the event loop for a while and return: for start-up work and for tests."""
        loop = QEventLoop()
        QTimer.singleShot(int(seconds * 1000), loop.quit)
        loop.exec()

    def quit(self) -> None:
        """End `run()`; safe from any thread."""
        self.call_soon(self.app.quit)

    def close(self) -> None:
        """Destroy the QApplication we created, so its display connection is closed before the display goes."""
        if self._owns_app and self.app is not None:
            self.app.processEvents()
            self.app.shutdown()
        self.app = None


class _Invoker(QObject):
    """Lives on the GUI thread; its queued signal carries callables there from any thread."""

    call = Signal(object)

    def __init__(self) -> None:
        super().__init__()
        # Queued even when emitted on the GUI thread itself: "soon" means after the current handler returns.
        self.call.connect(self._run, Qt.ConnectionType.QueuedConnection)

    @Slot(object)
    def _run(self, fn: Callable[[], object]) -> None:
        fn()
