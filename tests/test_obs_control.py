"""ObsControl against a real OBS Studio 29 (obs-websocket 5.1) under Xvfb, with a second obsws-python client
sending `BroadcastCustomEvent`s through OBS, as an OBS script, Stream Deck or Touch Portal plugin would."""
from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

import cv2
import numpy as np
import pytest

from tests.obs_harness import ObsInstance, free_port
from tests.test_osc_control import queue, status  # noqa: F401  (shared fixtures)
from vcam.commands import CommandQueue, QueuedCommand, SetPaused, SetPromptText, SwitchPrompt
from vcam.controls import ControlConfigError
from vcam.controls.obs import ObsConfig, ObsControl
from vcam.secrets import lookup_secret

pytestmark = pytest.mark.timeout(120)

PASSWORD_ENV = "VCAM_TEST_OBS_PASSWORD"  # not the real variable: a developer's own OBS password must not leak in
PROMPTS = ("anime", "sketch", "noir")


def obs_config(obs: ObsInstance, **overrides) -> ObsConfig:
    settings = dict(host=obs.host, port=obs.port, password_env=PASSWORD_ENV, use_keyring=False, known_prompts=PROMPTS)
    settings.update(overrides)
    return ObsConfig(**settings)


def next_item(queue: CommandQueue, timeout: float = 60.0) -> QueuedCommand:
    item = queue.get(timeout=timeout)
    assert item is not None, f"no command arrived within {timeout} s"
    return item


def wait_until(condition, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def password(obs_instance: ObsInstance, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(PASSWORD_ENV, obs_instance.password)
    return obs_instance.password


@pytest.fixture
def control(obs_instance: ObsInstance, password: str, queue, status) -> Iterator[ObsControl]:
    obs = ObsControl(obs_config(obs_instance, scene_prompts={"vcam-sketch-scene": "sketch"}), queue, status)
    obs.start()
    assert obs.wait_connected(15), status.lines
    yield obs
    obs.stop()


def test_commands_broadcast_through_obs_reach_the_queue(obs_instance, control, queue) -> None:
    # One at a time, as a person presses hotkeys: OBS sends custom events out from a pool of threads, so two
    # broadcasts sent back to back can reach the listeners in either order (seen on a loaded machine, even over one
    # connection); the order of separate broadcasts is OBS's, not vcam's to keep.
    payloads = ({"command": "prompt", "name": "anime"}, {"command": "pause", "value": True}, {"command": "resume"},
                {"command": "next"}, {"command": "text", "text": "a neon city"})
    for count, payload in enumerate(payloads, start=1):
        obs_instance.broadcast({"vcam": payload})
        assert wait_until(lambda: len(queue) == count)
    received = queue.drain()  # in the order they arrived (`get` would let pause and resume overtake)
    assert [item.command for item in received] == [
        SwitchPrompt(name="anime"), SetPaused(paused=True), SetPaused(paused=False), SwitchPrompt(step=1),
        SetPromptText(text="a neon city"),
    ]
    assert {item.origin for item in received} == {"obs"}


def test_custom_events_of_other_plugins_are_ignored_silently(obs_instance, control, queue, status) -> None:
    lines_before = len(status.lines)
    obs_instance.broadcast({"command": "next"})  # our command shape, but not under our key: not for us
    obs_instance.broadcast({"advss": {"macro": "go"}, "attrs": 1})
    obs_instance.broadcast({"vcam": {"command": "quit"}})
    assert next_item(queue).command.__class__.__name__ == "Quit"
    assert queue.drain() == []
    assert status.lines[lines_before:] == []


def test_bad_payloads_each_give_one_line_and_the_connection_stays_up(obs_instance, control, queue, status) -> None:
    bad = [
        ("next", "a command is a JSON object"),
        ([1, 2], "a command is a JSON object"),
        ({"command": "dance"}, "unknown command 'dance'"),
        ({"command": "prompt", "name": "watercolour"}, "unknown prompt 'watercolour'"),
        ({"command": "text", "text": "x" * 5000}, "at most 1000 are accepted"),
        ({"command": "blend", "name": "anime", "frames": "lots"}, "'frames' must be a whole number"),
    ]
    lines_before = len(status.lines)
    for payload, _ in bad:
        obs_instance.broadcast({"vcam": payload})
    obs_instance.broadcast({"vcam": {"command": "prompt", "name": "noir"}})
    assert next_item(queue).command == SwitchPrompt(name="noir")
    lines = status.wait_for(lines_before + len(bad))[lines_before:]
    assert len(lines) == len(bad), lines
    for line, (_, fragment) in zip(lines, bad):
        assert line.startswith("OBS: ignored a command:") and fragment in line, line
        assert "\n" not in line and len(line) <= 300
    assert control.connected


def broadcast_raw(obs: ObsInstance, event_data_json: str) -> None:
    """`BroadcastCustomEvent` with eventData written as raw JSON text: Python's own encoder refuses to write
    nesting thousands deep, a stranger's client does not."""
    with obs.client() as client:
        client.base_client.ws.send('{"op": 6, "d": {"requestType": "BroadcastCustomEvent", "requestId": "raw", '
                                   f'"requestData": {{"eventData": {event_data_json}}}}}}}')
        client.base_client.ws.recv()  # OBS's answer: the event has been broadcast


def test_events_with_hostile_keys_or_deep_nesting_never_stop_the_control(obs_instance, control, queue, status,
                                                                         capfd) -> None:
    """Such events ended obsws-python's event thread with a traceback, losing every event until a reconnect."""
    obs_instance.broadcast({"__slots__": ["x"], "__class__": 1, "__init__": "y"})
    obs_instance.broadcast({"vcam": {"command": "next"}, "__slots__": 1, "__dict__": {}})
    broadcast_raw(obs_instance, '{"deep": ' + "[" * 3000 + "]" * 3000 + "}")
    broadcast_raw(obs_instance, '{"vcam": ' + '{"a":' * 3000 + "1" + "}" * 3000 + "}")
    obs_instance.broadcast({"vcam": {"command": "prompt", "name": "noir"}})
    assert next_item(queue).command == SwitchPrompt(step=1)
    assert next_item(queue).command == SwitchPrompt(name="noir"), "the events after the bad ones still arrive"
    assert control.connected and sum("connected to" in line for line in status.lines) == 1, status.lines
    assert all("\n" not in line and len(line) <= 300 for line in status.lines)
    assert "Traceback" not in capfd.readouterr().err


def test_a_frozen_obs_is_noticed_within_ten_seconds_and_the_control_reconnects_when_it_thaws(
    obs_instance, control, queue, status
) -> None:
    """SIGSTOP freezes OBS with its connection open, as a hung OBS or a sleeping laptop does: no close ever comes."""
    pid = obs_instance._process.pid  # the OBS the harness started
    os.kill(pid, signal.SIGSTOP)
    try:
        assert wait_until(lambda: any("lost" in line for line in status.lines), timeout=10.0), status.lines
        assert not control.connected
    finally:
        os.kill(pid, signal.SIGCONT)
    assert wait_until(lambda: sum("connected to" in line for line in status.lines) == 2, timeout=60), status.lines
    obs_instance.broadcast({"vcam": {"command": "previous"}})
    assert next_item(queue).command == SwitchPrompt(step=-1)


def test_switching_to_a_mapped_scene_switches_the_prompt(obs_instance, control, queue) -> None:
    with obs_instance.client() as client:
        if "vcam-sketch-scene" not in [s["sceneName"] for s in client.get_scene_list().scenes]:
            client.create_scene("vcam-sketch-scene")
        client.set_current_program_scene("vcam-sketch-scene")
        item = next_item(queue)
        client.set_current_program_scene("Scene")  # not mapped: no command
    assert item.command == SwitchPrompt(name="sketch") and item.origin == "obs"
    time.sleep(0.5)
    assert queue.drain() == []


def test_control_reconnects_by_itself_after_obs_restarts(obs_instance, control, queue, status) -> None:
    obs_instance.restart(down_seconds=1.0)
    assert wait_until(lambda: any("lost" in line for line in status.lines)), status.lines
    assert control.wait_connected(20), status.lines
    obs_instance.broadcast({"vcam": {"command": "previous"}})
    assert next_item(queue).command == SwitchPrompt(step=-1)
    assert sum("connected to" in line for line in status.lines) == 2


def test_wrong_password_gives_the_clear_line_once_and_does_not_spin(obs_instance, monkeypatch, queue, status) -> None:
    monkeypatch.setenv(PASSWORD_ENV, "not-the-password")
    obs = ObsControl(obs_config(obs_instance), queue, status)
    obs.start()
    try:
        lines = status.wait_for(1, timeout=10)
        time.sleep(1.5)  # a spinning client would have retried many times by now
        assert obs.connection_attempts == 1
    finally:
        obs.stop()
    assert lines == [
        f"OBS rejected the WebSocket password from {PASSWORD_ENV}: set {PASSWORD_ENV} to the password shown in "
        "OBS > Tools > WebSocket Server Settings"
    ]
    assert not obs.connected


def test_missing_password_names_the_variable_and_the_keyring(obs_instance, monkeypatch, queue, status) -> None:
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    obs = ObsControl(obs_config(obs_instance), queue, status)
    obs.start()
    try:
        line = status.wait_for(1, timeout=10)[0]
    finally:
        obs.stop()
    assert line.startswith(f"OBS at {obs_instance.host}:{obs_instance.port} asks for a WebSocket password: set {PASSWORD_ENV}")
    assert "keyring set vcam obs" in line


def test_obs_not_running_is_reported_once_while_retrying_with_back_off(queue, status) -> None:
    config = ObsConfig(port=free_port(), password_env=PASSWORD_ENV, use_keyring=False, retry_initial=0.1, retry_max=0.4)
    obs = ObsControl(config, queue, status)
    obs.start()
    time.sleep(1.5)
    obs.stop()
    assert 3 <= obs.connection_attempts <= 8  # 0.1, 0.2, 0.4, 0.4, ... : retries, but with back-off
    assert len(status.lines) == 1 and "OBS is not reachable at 127.0.0.1" in status.lines[0], status.lines


def test_stop_returns_at_once_and_joins_the_threads(obs_instance, password, queue, status) -> None:
    obs = ObsControl(obs_config(obs_instance), queue, status)
    obs.start()
    assert obs.wait_connected(15)
    started = time.monotonic()
    obs.stop()
    assert time.monotonic() - started < 3.0  # (a stop that timed out its join would leave the thread alive:)
    assert not any(t.name == "vcam-obs-control" and t.is_alive() for t in threading.enumerate())


def test_stop_returns_at_once_while_a_handshake_hangs(queue, status) -> None:
    """A port that accepts but never answers (a wrong service, a frozen OBS) must not hold stop() up."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        config = ObsConfig(port=silent.getsockname()[1], password_env=PASSWORD_ENV, use_keyring=False)
        obs = ObsControl(config, queue, status)
        obs.start()
        time.sleep(0.3)  # the supervisor is now waiting for the WebSocket upgrade answer
        started = time.monotonic()
        obs.stop()
        assert time.monotonic() - started < 2.0  # one 0.75 s handshake step at most, not all three in turn
    assert not any(t.name == "vcam-obs-control" and t.is_alive() for t in threading.enumerate())


def test_the_password_never_reaches_the_logs(obs_instance, password, queue, status, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    obs = ObsControl(obs_config(obs_instance), queue, status)
    obs.start()
    assert obs.wait_connected(15)
    obs.stop()
    assert password not in caplog.text and all(password not in line for line in status.lines)


def test_a_scene_mapped_to_an_unknown_prompt_is_refused_at_configuration() -> None:
    with pytest.raises(ControlConfigError, match=r"obs.scenes maps to unknown prompt\(s\) 'oil'; the preset has"):
        ObsConfig(scene_prompts={"Intro": "oil"}, known_prompts=PROMPTS)


def test_password_comes_from_the_environment_before_the_keyring(monkeypatch) -> None:
    monkeypatch.setenv(PASSWORD_ENV, "from-env")
    assert lookup_secret(PASSWORD_ENV, "obs").value == "from-env"
    assert lookup_secret(PASSWORD_ENV, "obs").origin == "environment"


def run_lookup(tmp_path, prelude: str = "", backend: str = "") -> str:
    """`lookup_secret` in a fresh interpreter: keyring's chosen backend is process-wide, so tests keep it there."""
    script = prelude + "from vcam.secrets import lookup_secret\ns = lookup_secret('VCAM_UNSET_VAR', 'obs'); print(s.value, s.origin, repr(s))\n"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    if backend:
        env["PYTHON_KEYRING_BACKEND"] = backend
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_a_broken_keyring_backend_means_no_password_not_a_crash(tmp_path) -> None:
    """keyring's `fail` backend raises on every call, like a headless Linux without a Secret Service."""
    assert run_lookup(tmp_path, backend="keyring.backends.fail.Keyring") == "none Secret(origin='none')"


def test_without_the_variable_the_password_comes_from_the_keyring(tmp_path) -> None:
    """A keyring backend holding only ("vcam", "obs"), chosen with keyring's own `set_keyring`."""
    prelude = (
        "import keyring\nfrom keyring.backend import KeyringBackend\n"
        "class OneSecret(KeyringBackend):\n"
        "    priority = 1\n"
        "    def get_password(self, service, user):\n"
        "        return 'from-keyring' if (service, user) == ('vcam', 'obs') else None\n"
        "    def set_password(self, service, user, password): raise NotImplementedError\n"
        "    def delete_password(self, service, user): raise NotImplementedError\n"
        "keyring.set_keyring(OneSecret())\n"
    )
    assert run_lookup(tmp_path, prelude) == "from-keyring keyring Secret(origin='keyring')"


# -- "OBS shows our stream": the harness helper that puts an MJPEG URL in a Media Source -------------------------


class _MjpegHandler(BaseHTTPRequestHandler):
    """multipart/x-mixed-replace JPEG frames, the format our MJPEG sink serves, until the server stops."""

    frame = b""
    stopping = threading.Event()

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.send_response(200)
        self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        self.end_headers()
        try:
            while not self.stopping.is_set():
                self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\n")
                self.wfile.write(f"Content-Length: {len(self.frame)}\r\n\r\n".encode() + self.frame + b"\r\n")
                time.sleep(0.1)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args) -> None:
        pass


def left_and_right_colours(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """BGR colours at the middle of the left and right halves (the test pictures are two flat halves)."""
    height, width = image.shape[:2]
    return image[height // 2, width // 4].astype(int), image[height // 2, 3 * width // 4].astype(int)


def test_obs_media_source_shows_an_mjpeg_http_stream(obs_instance) -> None:
    picture = np.zeros((180, 320, 3), np.uint8)
    picture[:, :160] = (0, 0, 255)  # left half red, right half green (BGR)
    picture[:, 160:] = (0, 255, 0)
    handler = type("Handler", (_MjpegHandler,), {"frame": cv2.imencode(".jpg", picture)[1].tobytes(),
                                                  "stopping": threading.Event()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    serving.start()
    try:
        shown = obs_instance.screenshot_media_url(f"http://127.0.0.1:{server.server_address[1]}/stream.mjpg")
    finally:
        handler.stopping.set()
        server.shutdown()
        server.server_close()
        serving.join(timeout=2)
    left, right = left_and_right_colours(shown)
    assert left[2] > 180 and left[1] < 80, left  # red
    assert right[1] > 180 and right[2] < 80, right  # green


def test_obs_media_source_shows_the_vcam_mjpeg_sink(obs_instance) -> None:
    """The same with our own MJPEG server (vcam.mjpeg), publishing RGB frames as the service does."""
    from vcam.mjpeg import MjpegServer

    picture = np.zeros((180, 320, 3), np.uint8)
    picture[:, :160] = (255, 0, 0)  # left half red, right half blue (RGB)
    picture[:, 160:] = (0, 0, 255)
    server = MjpegServer(0, fps=10)
    stopping = threading.Event()

    def publish() -> None:
        while not stopping.is_set():
            server.publish(picture)
            time.sleep(0.1)

    publisher = threading.Thread(target=publish, daemon=True)
    publisher.start()
    try:
        shown = obs_instance.screenshot_media_url(server.url)
    finally:
        stopping.set()
        publisher.join(timeout=2)
        server.close()
    left, right = left_and_right_colours(shown)
    assert left[2] > 180 and left[0] < 80, left  # red, in OpenCV's BGR order
    assert right[0] > 180 and right[2] < 80, right  # blue
