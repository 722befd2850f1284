"""Every way of stopping a running `vcam run` (SIGINT, SIGTERM, SIGHUP, the quit command, the tray's Quit) releases
the camera and the virtual camera within 2 seconds, finalises a file being written, and exits with status 0, also
while a thread is inside a long model call (the interpreter must never exit under a torch call: status 134,
"terminate called without an active exception"). Headless and with the Qt tray owning the main thread (where
Python signal handlers only run if Python code gets the thread).

The 20-stops-in-a-row run at 1024x1024 is `python bench/stops.py` (about 15 s a stop on 2 busy cores: too slow for
the suite); here each signal is checked once in the same situation."""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest

from bench.soak import free_port, write_preset
from bench.stops import LONG_CALL_SIZE, start_vcam, wait_for_line
from tests.media import read_video
from tests.xvfb import xvfb  # noqa: F401  (module-scoped X server)
from vcam.stop_signals import StopSignals

STOP_SIGNALS = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]


def stop_with(process: subprocess.Popen, sig: int | None = None) -> tuple[float, str]:
    """Send `sig` (None: the stop was asked otherwise); check that the process then exits by itself, with status 0,
    and return the seconds the service says it took to release the camera and the virtual camera (measured from its
    stop request) and the rest of its stderr."""
    if sig is not None:
        process.send_signal(sig)
    try:
        rest = process.communicate(timeout=120)[1]  # generous: tearing torch and Qt down is slow on a loaded machine
    finally:
        if process.poll() is None:
            process.kill()
    assert "terminate called" not in rest and "Traceback" not in rest, rest
    assert process.returncode == 0, rest
    released = re.search(r"released ([0-9.]+) s after the stop request", rest)
    assert released, rest
    return float(released.group(1)), rest


@pytest.mark.timeout(900)
def test_sigint_releases_the_devices_of_a_headless_run_within_two_seconds(tiny_user_cache) -> None:
    process = start_vcam({"DISPLAY": ""}, "--no-tray")
    wait_for_line(process, "first stylised frame")
    assert stop_with(process, signal.SIGINT)[0] < 2.0


@pytest.mark.timeout(900)
def test_sigterm_releases_the_devices_when_the_tray_owns_the_main_thread_within_two_seconds(xvfb, tiny_user_cache) -> None:  # noqa: F811
    xvfb.start_tray_host()
    process = start_vcam({"DISPLAY": xvfb.display})
    lines = wait_for_line(process, "first stylised frame")
    assert not any("no tray" in line for line in lines), lines  # the Qt loop really runs on the main thread
    assert stop_with(process, signal.SIGTERM)[0] < 2.0


@pytest.mark.timeout(900)
@pytest.mark.parametrize("sig", STOP_SIGNALS, ids=lambda sig: sig.name)
def test_each_stop_signal_during_a_long_model_call_exits_with_status_0(tiny_user_cache, sig) -> None:
    # At 1024x1024 loading and warming up the model takes tens of seconds of torch calls on the model thread,
    # and a frame many seconds: the signal lands inside a model call, which cannot be interrupted.
    process = start_vcam({"DISPLAY": ""}, "--no-tray", "--width", str(LONG_CALL_SIZE), "--height", str(LONG_CALL_SIZE))
    wait_for_line(process, "output: mjpeg")
    released, rest = stop_with(process, sig)
    assert released < 2.0
    assert f"stop requested ({sig.name})" in rest


@pytest.mark.timeout(900)
@pytest.mark.parametrize("sig", STOP_SIGNALS, ids=lambda sig: sig.name)
def test_a_recording_stopped_by_each_signal_is_playable_with_every_frame_written(tiny_user_cache, tmp_path, sig) -> None:
    video = tmp_path / "out.mp4"
    process = start_vcam({"DISPLAY": ""}, "--no-tray", "--sink", str(video))
    wait_for_line(process, "first stylised frame")
    _, rest = stop_with(process, sig)
    written = re.search(r"out\.mp4: (\d+) frames written", rest)
    assert written, rest
    frames = read_video(video)
    assert len(frames) == int(written.group(1)) >= 1
    assert frames[0].shape == (720, 1280, 3)


@pytest.mark.timeout(900)
def test_sigterm_during_the_first_onnx_export_exits_with_status_0(tiny_user_cache) -> None:
    engines = tiny_user_cache / ".cache" / "vcam" / "engines"
    process = start_vcam({"DISPLAY": ""}, "--no-tray", "--engine", "onnxruntime")
    wait_for_line(process, "output: mjpeg")
    deadline = time.monotonic() + 500
    while not list(engines.glob(".building-*")):  # the export has begun writing its staging folder
        assert process.poll() is None and time.monotonic() < deadline, "the export never started"
        time.sleep(0.1)
    released, _ = stop_with(process, signal.SIGTERM)
    assert released < 2.0


@pytest.mark.timeout(900)
def test_a_second_signal_while_stopping_still_exits_with_status_0(tiny_user_cache) -> None:
    process = start_vcam({"DISPLAY": ""}, "--no-tray", "--width", str(LONG_CALL_SIZE), "--height", str(LONG_CALL_SIZE))
    wait_for_line(process, "output: mjpeg")
    process.send_signal(signal.SIGTERM)
    wait_for_line(process, "stop requested")
    released, _ = stop_with(process, signal.SIGINT)
    assert released < 2.0


@pytest.mark.timeout(900)
def test_quit_command_over_osc_exits_with_status_0(tiny_user_cache, tmp_path) -> None:
    from pythonosc.udp_client import SimpleUDPClient

    port = free_port(socket.SOCK_DGRAM)
    process = start_vcam({"DISPLAY": ""}, "--no-tray", "--preset", str(write_preset(tmp_path, port)), "--osc")
    wait_for_line(process, "first stylised frame")
    SimpleUDPClient("127.0.0.1", port).send_message("/vcam/quit", [])
    released, rest = stop_with(process)
    assert released < 2.0
    assert "stop requested (quit command)" in rest


@pytest.mark.timeout(900)
def test_tray_quit_clicked_on_the_display_exits_with_status_0(xvfb, tiny_user_cache) -> None:  # noqa: F811
    if shutil.which("xdotool") is None:
        pytest.skip("xdotool is not installed (apt-get install xdotool)")
    xvfb.start_tray_host()
    process = start_vcam(xvfb.environment())
    wait_for_line(process, "output: mjpeg")  # frames flow; the model may still be loading (a model call in flight)
    x, y = tray_icon_centre(xvfb.display)
    env = xvfb.environment()
    deadline = time.monotonic() + 300
    while process.poll() is None and time.monotonic() < deadline:
        # Right-click opens the menu; Up wraps to its last item, Quit; Return chooses it. Repeated until the
        # process goes: on a busy machine the menu may not be up yet when the keys arrive.
        subprocess.run(["xdotool", "mousemove", str(x), str(y), "click", "3"], env=env, check=True, timeout=10)
        subprocess.run(["xdotool", "sleep", "0.5", "key", "Up", "Return"], env=env, check=True, timeout=10)
        wait_for_exit(process, 10.0)
    released, rest = stop_with(process)
    assert released < 2.0
    assert "stop requested (quit command)" in rest


@pytest.mark.parametrize("sig", STOP_SIGNALS, ids=lambda sig: sig.name)
def test_stop_signals_reach_the_callback_by_name_and_restore_puts_the_old_handlers_back(sig) -> None:
    # (The Windows console-close handler cannot be installed or sent here: no Windows machine runs the suite.)
    received: list[str] = []
    before = signal.getsignal(sig)
    handlers = StopSignals(received.append, threading.Event())
    assert handlers.install()
    try:
        os.kill(os.getpid(), sig)
        deadline = time.monotonic() + 30
        while not received and time.monotonic() < deadline:
            time.sleep(0.01)  # Python runs the handler on the main thread between bytecodes
    finally:
        handlers.restore()
    assert received == [sig.name]
    assert signal.getsignal(sig) == before


def test_stop_signals_are_not_installed_off_the_main_thread() -> None:
    results: list[bool] = []
    worker = threading.Thread(target=lambda: results.append(StopSignals(print, threading.Event()).install()))
    worker.start()
    worker.join(timeout=30)
    assert results == [False]


def wait_for_exit(process: subprocess.Popen, seconds: float) -> None:
    try:
        process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        pass


def tray_icon_centre(display: str) -> tuple[int, int]:
    """Where our icon is on the screen: the window of class "vcam" that the tray host (trayer) embedded."""
    from Xlib import X
    from Xlib import display as xdisplay

    connection = xdisplay.Display(display)
    try:
        root = connection.screen().root
        deadline = time.monotonic() + 300  # the tray starts after a Qt probe in a child process: slow when loaded
        while time.monotonic() < deadline:
            for window in root.query_tree().children:
                if "trayer" not in (window.get_wm_class() or ()):
                    continue
                for icon in descendants(window):
                    if "vcam" in (icon.get_wm_class() or ()) and icon.get_attributes().map_state == X.IsViewable:
                        geometry = icon.get_geometry()
                        origin = icon.translate_coords(root, 0, 0)  # the root's (0, 0) in the icon's coordinates
                        return -origin.x + geometry.width // 2, -origin.y + geometry.height // 2
            time.sleep(0.2)
    finally:
        connection.close()
    raise AssertionError("our icon never appeared in the tray")


def descendants(window) -> list:
    found = []
    for child in window.query_tree().children:
        found += [child, *descendants(child)]
    return found
