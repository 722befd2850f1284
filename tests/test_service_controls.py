"""The running service driven by real controls: global hotkeys typed with xdotool on a real X server, and
commands broadcast through a real OBS Studio. Checks the service's own state (prompt on screen, paused)."""
from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import pytest

from vcam import commands as cmd
from vcam.cli import build_parser
from vcam.presets import load_preset
from vcam.service import Service, ServiceOptions
from vcam.settings import resolve_settings
from tests.xvfb import xvfb  # noqa: F401  (module-scoped X server)


class NullRecordingSink:
    fps = 15.0

    def __init__(self) -> None:
        self.count = 0

    def write(self, frame) -> None:
        self.count += 1

    def close(self) -> None:
        pass


def tiny_preset_with(tmp_path: Path, extra_toml: str) -> Path:
    path = tmp_path / "controls.toml"
    path.write_text(Path(load_preset("tiny").source_path).read_text() + "\n" + extra_toml)
    return path


def start_service(preset: Path, options: ServiceOptions) -> tuple[Service, threading.Thread]:
    args = build_parser().parse_args(["run", "--preset", str(preset), "--width", "64", "--height", "64",
                                      "--source", "synthetic"])
    service = Service(resolve_settings(args), options, sink=NullRecordingSink())
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 600  # generous: a loaded machine loads the model slowly
    while not service.ready_event.is_set():
        assert time.monotonic() < deadline and thread.is_alive(), service.messages
        time.sleep(0.05)
    return service, thread


def stop_service(service: Service, thread: threading.Thread) -> None:
    service.queue.put(cmd.Quit(), "test")
    thread.join(timeout=120)  # generous: after the release the model's call in flight gets up to 3 s more
    assert not thread.is_alive()


def until(condition, action=None, timeout: float = 120.0) -> None:
    """Wait for `condition`, repeating `action` every half second (a control may still be connecting)."""
    deadline = time.monotonic() + timeout
    next_action = 0.0
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        if action is not None and time.monotonic() >= next_action:
            action()
            next_action = time.monotonic() + 0.5
        time.sleep(0.05)


@pytest.mark.timeout(900)
def test_hotkeys_typed_on_the_display_switch_the_running_service(xvfb, tiny_user_cache, tmp_path,  # noqa: F811
                                                                  monkeypatch) -> None:
    monkeypatch.setenv("DISPLAY", xvfb.display)
    preset = tiny_preset_with(tmp_path, "")
    service, thread = start_service(preset, ServiceOptions(tray=False, hotkeys=True, status_line=False))
    names = [p.name for p in service.settings.prompts]

    def key(combo: str) -> None:
        subprocess.run(["xdotool", "key", combo], env={"DISPLAY": xvfb.display, "PATH": "/usr/bin:/bin"},
                       check=True, timeout=10)

    try:
        until(lambda: service.prompt_label == names[1], lambda: key("ctrl+alt+2"))
        until(lambda: service.stream.prompts.text == service.settings.prompts[1].text)  # at the next frame boundary
        key("ctrl+alt+p")
        until(lambda: service.paused)
        key("ctrl+alt+p")
        until(lambda: not service.paused)
        key("ctrl+alt+Right")
        until(lambda: service.prompt_label == names[2])
    finally:
        stop_service(service, thread)


@pytest.mark.timeout(900)
def test_commands_broadcast_through_obs_switch_pause_and_resume_the_running_service(
        obs_instance, tiny_user_cache, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("VCAM_OBS_PASSWORD", obs_instance.password)
    preset = tiny_preset_with(tmp_path, f"[obs]\nenabled = true\nhost = \"127.0.0.1\"\nport = {obs_instance.port}\n")
    service, thread = start_service(preset, ServiceOptions(tray=False, hotkeys=False, status_line=False))
    names = [p.name for p in service.settings.prompts]
    try:
        until(lambda: service.prompt_label == names[2],
              lambda: obs_instance.broadcast({"vcam": {"command": "prompt", "name": names[2]}}))
        until(lambda: service.paused, lambda: obs_instance.broadcast({"vcam": {"command": "pause", "value": True}}))
        until(lambda: not service.paused, lambda: obs_instance.broadcast({"vcam": {"command": "resume"}}))
        obs_instance.broadcast({"vcam": {"command": "prompt", "name": "no-such-style"}})
        until(lambda: any("no-such-style" in m for m in service.messages))
        assert thread.is_alive()
    finally:
        stop_service(service, thread)
