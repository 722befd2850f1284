"""SIGINT and SIGTERM stop a running `vcam run` within 2 seconds, headless and with the Qt tray owning the main
thread (where Python signal handlers only run if Python code gets the thread)."""
from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time

import pytest

from tests.xvfb import xvfb  # noqa: F401  (module-scoped X server)


def start_vcam(extra_env: dict[str, str], *args: str) -> subprocess.Popen:
    env = dict(os.environ, **extra_env)
    return subprocess.Popen([sys.executable, "-m", "vcam.cli", "run", "--model", "tiny", "--source", "synthetic",
                             "--sink", "mjpeg:0", "--no-hotkeys", "--quiet", *args],
                            stderr=subprocess.PIPE, text=True, env=env)


def wait_for_line(process: subprocess.Popen, text: str, timeout: float = 120.0) -> list[str]:
    lines: list[str] = []
    selector = selectors.DefaultSelector()
    selector.register(process.stderr, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if selector.select(timeout=0.5):
            line = process.stderr.readline()
            if not line:
                break
            lines.append(line)
            if text in line:
                return lines
    process.kill()
    raise AssertionError(f"{text!r} never appeared: {''.join(lines)}")


def stop_with(process: subprocess.Popen, sig: int) -> float:
    start = time.monotonic()
    process.send_signal(sig)
    process.wait(timeout=10)
    return time.monotonic() - start


@pytest.mark.timeout(180)
def test_sigint_stops_a_headless_run_within_two_seconds(tiny_user_cache) -> None:
    process = start_vcam({"DISPLAY": ""}, "--no-tray")
    wait_for_line(process, "first stylised frame")
    assert stop_with(process, signal.SIGINT) < 2.0
    assert process.returncode == 0


@pytest.mark.timeout(180)
def test_sigterm_stops_a_run_whose_tray_owns_the_main_thread_within_two_seconds(xvfb, tiny_user_cache) -> None:  # noqa: F811
    xvfb.start_tray_host()
    process = start_vcam({"DISPLAY": xvfb.display})
    lines = wait_for_line(process, "first stylised frame")
    assert not any("no tray" in line for line in lines), lines  # the Qt loop really runs on the main thread
    assert stop_with(process, signal.SIGTERM) < 2.0
    assert process.returncode == 0
