"""SIGINT and SIGTERM make a running `vcam run` release the camera and the virtual camera within 2 seconds and exit,
headless and with the Qt tray owning the main thread (where Python signal handlers only run if Python code gets
the thread)."""
from __future__ import annotations

import os
import re
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


def wait_for_line(process: subprocess.Popen, text: str, timeout: float = 200.0) -> list[str]:
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
    """Send `sig`; return the seconds the service says it took to release the camera and the virtual camera
    (measured from its stop request), after checking that the process then exits promptly by itself."""
    start = time.monotonic()
    process.send_signal(sig)
    rest = process.communicate(timeout=20)[1]
    assert time.monotonic() - start < 10.0  # exit includes tearing down torch and Qt, slow on a loaded machine
    released = re.search(r"released ([0-9.]+) s after the stop request", rest)
    assert released, rest
    return float(released.group(1))


@pytest.mark.timeout(300)
def test_sigint_releases_the_devices_of_a_headless_run_within_two_seconds(tiny_user_cache) -> None:
    process = start_vcam({"DISPLAY": ""}, "--no-tray")
    wait_for_line(process, "first stylised frame")
    assert stop_with(process, signal.SIGINT) < 2.0
    assert process.returncode == 0


@pytest.mark.timeout(300)
def test_sigterm_releases_the_devices_when_the_tray_owns_the_main_thread_within_two_seconds(xvfb, tiny_user_cache) -> None:  # noqa: F811
    xvfb.start_tray_host()
    process = start_vcam({"DISPLAY": xvfb.display})
    lines = wait_for_line(process, "first stylised frame")
    assert not any("no tray" in line for line in lines), lines  # the Qt loop really runs on the main thread
    assert stop_with(process, signal.SIGTERM) < 2.0
    assert process.returncode == 0
