"""A private X server for tests that need a real display (hotkeys, tray, preview window).

Xvfb picks a free display number itself (`-displayfd`), so parallel test runs never collide, and it is stopped
by the PID we started, never by name. Optional helpers start a system-tray host (trayer) on the same display,
because a QSystemTrayIcon only appears when some program owns the _NET_SYSTEM_TRAY selection.
"""
from __future__ import annotations

import contextlib

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from typing import Iterator

import pytest


@dataclass
class XvfbServer:
    """One Xvfb process; `display` is ":N" once `start()` returned."""

    screen: str = "640x480x24"
    display: str = ""
    _process: subprocess.Popen | None = field(default=None, repr=False)
    _helpers: list[subprocess.Popen] = field(default_factory=list, repr=False)

    def start(self, timeout: float = 10.0) -> "XvfbServer":
        read_fd, write_fd = os.pipe()
        self._process = subprocess.Popen(
            ["Xvfb", "-displayfd", str(write_fd), "-screen", "0", self.screen, "-nolisten", "tcp", "-noreset"],
            pass_fds=(write_fd,),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(write_fd)
        number = b""
        deadline = time.monotonic() + timeout
        with os.fdopen(read_fd, "rb", buffering=0) as pipe:
            while not number.endswith(b"\n") and time.monotonic() < deadline:
                chunk = pipe.read(16)
                if not chunk:
                    break
                number += chunk
        if not number.strip().isdigit():
            self.stop()
            raise RuntimeError("Xvfb did not report a display number")
        self.display = f":{int(number.strip())}"
        return self

    def environment(self) -> dict[str, str]:
        """The environment of a child process that should talk to this server and nothing else."""
        env = {k: v for k, v in os.environ.items() if k not in ("WAYLAND_DISPLAY", "XAUTHORITY")}
        env.update(DISPLAY=self.display, QT_QPA_PLATFORM="xcb")
        return env

    def start_tray_host(self, timeout: float = 10.0) -> None:
        """Run trayer, a freedesktop system-tray host, and wait until it owns the tray selection. One host per
        display: a second trayer would sit on top of the first, so clicks meant for an icon would hit the wrong one."""
        if self._tray_selection_owned():
            return
        if shutil.which("trayer") is None:
            raise RuntimeError("trayer is not installed (apt-get install trayer)")
        helper = subprocess.Popen(
            ["trayer", "--edge", "top", "--widthtype", "pixel", "--width", "200", "--height", "32"],
            env=self.environment(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._helpers.append(helper)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._tray_selection_owned():
                return
            time.sleep(0.1)
        raise RuntimeError("trayer did not take the system-tray selection in time")

    def _tray_selection_owned(self) -> bool:
        from Xlib import display as xdisplay

        connection = xdisplay.Display(self.display)
        try:
            selection = connection.intern_atom(f"_NET_SYSTEM_TRAY_S{connection.get_default_screen()}")
            return connection.get_selection_owner(selection) != 0
        finally:
            connection.close()

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """The server stopped with SIGSTOP for the block: clients connect (the kernel accepts) but get no reply,
        as from an X server starved by a busy machine."""
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)
        try:
            yield
        finally:
            self._process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        for process in [*self._helpers, self._process]:
            if process is None or process.poll() is not None:
                continue
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._helpers.clear()


def xvfb_available() -> bool:
    return shutil.which("Xvfb") is not None


@contextlib.contextmanager
def running_xvfb() -> Iterator[XvfbServer]:
    """An X server for the duration of the block; skipped only where Xvfb is not installed."""
    if not xvfb_available():
        pytest.skip("Xvfb is not installed (apt-get install xvfb)")
    server = XvfbServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def xvfb() -> Iterator[XvfbServer]:
    """A fresh X server for one test module."""
    with running_xvfb() as server:
        yield server
