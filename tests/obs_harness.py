"""A real OBS Studio (Debian's obs-studio 29, obs-websocket 5.1) for tests, under its own Xvfb and HOME.

OBS reads its WebSocket settings from `~/.config/obs-studio/global.ini` ([OBSWebSocket], checked in OBS 29.0.2:
`FirstLoad=false` stops obs-websocket from generating a random password on first start); `[General]
FirstRun=true` skips the auto-configuration wizard. The scene collection is written by us too, so that tests know
the scene names and OBS loads Python scripts (`modules.scripts-tool`) at start. OBS renders with Mesa llvmpipe
under Xvfb (software OpenGL 4.5), so no GPU is needed. obs-websocket 5.1 has no bind-address setting: it listens
on all interfaces, so the harness always requires a random password.

Start-up takes ~5-10 s on the 2-core machines, so `obs_instance` is session-scoped; `restart()` is for the
reconnect tests. Processes are stopped by the PIDs we started.
"""
from __future__ import annotations

import base64
import json
import secrets
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.xvfb import XvfbServer

REPO_ROOT = Path(__file__).resolve().parent.parent
VCAM_OBS_SCRIPT = REPO_ROOT / "vcam" / "obs" / "vcam_obs_script.py"
SCENE_COLLECTION = "vcam-tests"
MAIN_SCENE = "Scene"
SCRIPT_KEY_BINDING = ("vcam.prompt.noir", "ctrl+shift+F9")  # (script hotkey, xdotool keys) in `obs_instance`


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port nobody listens on right now (TCP by default, UDP with socket.SOCK_DGRAM)."""
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def obs_available() -> bool:
    return shutil.which("obs") is not None and shutil.which("Xvfb") is not None


@dataclass(frozen=True)
class ObsScript:
    """A Python script OBS loads at start (Tools > Scripts) with these settings (its properties' values)."""

    path: Path
    settings: dict[str, Any]


@dataclass
class ObsInstance:
    """One OBS process. `host`, `port`, `password` are what a WebSocket client needs."""

    home: Path
    port: int = field(default_factory=free_port)
    password: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    scripts: tuple[ObsScript, ...] = ()
    host: str = "127.0.0.1"
    script_osc_port: int | None = None  # where the loaded vcam OBS script sends its OSC messages, if loaded
    _xvfb: XvfbServer | None = field(default=None, repr=False)
    _process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def config_dir(self) -> Path:
        return self.home / ".config" / "obs-studio"

    @property
    def log_path(self) -> Path:
        return self.home / "obs-stdout.log"

    # -- lifecycle ------------------------------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> "ObsInstance":
        if self._xvfb is None:
            self._xvfb = XvfbServer(screen="1280x720x24").start()
        self._write_config()
        env = self._xvfb.environment()
        env.update(
            HOME=str(self.home),
            XDG_CONFIG_HOME=str(self.home / ".config"),
            LIBGL_ALWAYS_SOFTWARE="1",  # Mesa llvmpipe: there is no GPU here
            QT_QPA_PLATFORM="xcb",
        )
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                ["obs", "--disable-shutdown-check", "--disable-updater", "--minimize-to-tray", "--multi",
                 "--collection", SCENE_COLLECTION],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.home,
            )
        self._wait_until_ready(timeout)
        return self

    def stop_obs(self) -> None:
        """Stop OBS (not its X server) by PID; SIGTERM makes OBS save and exit cleanly."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def restart(self, down_seconds: float = 0.0, timeout: float = 60.0) -> None:
        """Stop OBS, stay down for `down_seconds` (a client must notice and retry), start it again."""
        self.stop_obs()
        time.sleep(down_seconds)
        self.start(timeout)

    def stop(self) -> None:
        self.stop_obs()
        if self._xvfb is not None:
            self._xvfb.stop()
            self._xvfb = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _wait_until_ready(self, timeout: float) -> None:
        """Ready means a logged-in request succeeds: the port opens before OBS has loaded its scenes."""
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                raise RuntimeError(f"OBS exited during start-up; see {self.log_path}:\n{self._log_tail()}")
            try:
                with self.client() as client:
                    client.get_scene_list()
                return
            except Exception as error:  # refused / handshake before the server is up
                last_error = error
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"OBS WebSocket did not answer within {timeout:.0f} s ({last_error}):\n{self._log_tail()}")

    def _log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _write_config(self) -> None:
        self.config_dir.mkdir(parents=True, exist_ok=True)
        (self.config_dir / "global.ini").write_text(
            "[General]\nFirstRun=true\nLastVersion=486539266\n\n"  # 29.0.2: no "what's new" dialog
            f"[Basic]\nSceneCollection={SCENE_COLLECTION}\nSceneCollectionFile={SCENE_COLLECTION}\n"
            "Profile=vcam-tests\nProfileDir=vcam-tests\n\n"
            # No preview: it drew ~0.18 of a core for the rest of the suite per session OBS (0.05 without)
            "[BasicWindow]\nPreviewEnabled=false\n\n"
            "[OBSWebSocket]\nFirstLoad=false\nServerEnabled=true\n"
            f"ServerPort={self.port}\nAlertsEnabled=false\nAuthRequired=true\nServerPassword={self.password}\n"
        )
        scenes = self.config_dir / "basic" / "scenes"
        scenes.mkdir(parents=True, exist_ok=True)
        collection = scenes / f"{SCENE_COLLECTION}.json"
        if collection.exists():  # a restart keeps what OBS saved (scenes the tests created)
            saved = json.loads(collection.read_text())
            saved.setdefault("modules", {})["scripts-tool"] = self._scripts_module()
            collection.write_text(json.dumps(saved))
            return
        collection.write_text(json.dumps({
            "name": SCENE_COLLECTION,
            "current_scene": MAIN_SCENE,
            "current_program_scene": MAIN_SCENE,
            "scene_order": [{"name": MAIN_SCENE}],
            "sources": [{
                "id": "scene", "versioned_id": "scene", "name": MAIN_SCENE,
                "settings": {"items": [], "id_counter": 0, "custom_size": False},
            }],
            "modules": {"scripts-tool": self._scripts_module()},
        }))
        (self.config_dir / "basic" / "profiles" / "vcam-tests").mkdir(parents=True, exist_ok=True)
        (self.config_dir / "basic" / "profiles" / "vcam-tests" / "basic.ini").write_text(
            "[General]\nName=vcam-tests\n\n[Video]\nBaseCX=320\nBaseCY=180\nOutputCX=320\nOutputCY=180\nFPSCommon=30\n"
        )

    def _scripts_module(self) -> list[dict[str, Any]]:
        return [{"path": str(script.path), "settings": script.settings} for script in self.scripts]

    # -- helpers for tests ----------------------------------------------------------------------------------

    def client(self, timeout: float = 5.0):
        """A logged-in obsws-python request client (use as a context manager)."""
        import logging

        import obsws_python

        logging.getLogger("obsws_python").setLevel(logging.CRITICAL)  # it logs passwords at INFO
        return obsws_python.ReqClient(host=self.host, port=self.port, password=self.password, timeout=timeout)

    def broadcast(self, event_data: dict[str, Any]) -> None:
        """Send a `BroadcastCustomEvent` through OBS, as an OBS script or another plugin would. OBS does not keep
        the order of separate broadcasts for the listeners (on a loaded machine the second of five sent back to back
        arrived first, over one connection as over five): a spec of order waits for each before the next."""
        with self.client() as client:
            client.broadcast_custom_event({"eventData": event_data})

    def press_keys(self, combo: str) -> None:
        """A real key press on OBS's X display (xdotool syntax, e.g. "ctrl+shift+F9"): OBS's global hotkeys see it."""
        if self._xvfb is None:
            raise RuntimeError("OBS is not started")
        subprocess.run(["xdotool", "key", combo], env=self._xvfb.environment(), check=True, timeout=10)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def screenshot_media_url(
        self, url: str, source_name: str = "vcam-stream", timeout: float = 60.0, width: int = 320, height: int = 180
    ):
        """Show `url` in a Media Source (ffmpeg_source) on the current scene; return its first non-blank frame.

        This is how a user shows our MJPEG sink in OBS. Returns a BGR uint8 array (OpenCV order) or raises
        TimeoutError with the last reason. The source is removed again afterwards.
        """
        import cv2
        import numpy as np

        with self.client() as client:
            scene = client.get_current_program_scene().current_program_scene_name
            wait_until_input_gone(client, source_name)  # a removed source keeps its name until OBS releases it
            client.create_input(
                scene, source_name, "ffmpeg_source",
                {"input": url, "is_local_file": False, "restart_on_activate": True, "close_when_inactive": False},
                True,
            )
            try:
                deadline = time.monotonic() + timeout
                last = "no screenshot yet"
                while time.monotonic() < deadline:
                    try:
                        shot = client.get_source_screenshot(source_name, "png", width, height, -1)
                        encoded = shot.image_data.split(",", 1)[1]
                        image = cv2.imdecode(np.frombuffer(base64.b64decode(encoded), np.uint8), cv2.IMREAD_COLOR)
                        if image is not None and image.max() > 16:
                            return image
                        last = "the source rendered only black"
                    except Exception as error:  # the source has no frame until ffmpeg has decoded one
                        last = str(error)
                    time.sleep(0.3)
                raise TimeoutError(f"OBS showed no frame of {url} within {timeout:.0f} s: {last}")
            finally:
                client.remove_input(source_name)
                wait_until_input_gone(client, source_name)


def wait_until_input_gone(client, name: str, timeout: float = 60.0) -> None:
    """OBS removes an input asynchronously (later still on a loaded machine): until it has, creating another
    input of the same name fails with code 601."""
    deadline = time.monotonic() + timeout
    while any(i["inputName"] == name for i in client.get_input_list().inputs):
        if time.monotonic() > deadline:
            raise TimeoutError(f"OBS still has an input named {name!r} {timeout:.0f} s after its removal")
        time.sleep(0.1)


def start_obs(home: Path, scripts: tuple[ObsScript, ...] = (), script_osc_port: int | None = None) -> ObsInstance:
    return ObsInstance(home=home, scripts=scripts, script_osc_port=script_osc_port).start()


@pytest.fixture(scope="session")
def obs_instance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ObsInstance]:
    """A real OBS for the whole session, with the vcam OBS script loaded (its OSC target is
    `obs_instance.script_osc_port`, UDP on 127.0.0.1, prompts "anime", "sketch", "noir"; its hotkey
    `SCRIPT_KEY_BINDING[0]` is bound to the keys `SCRIPT_KEY_BINDING[1]`).

    Skipped only where OBS or Xvfb is not installed.
    """
    if not obs_available():
        pytest.skip("OBS Studio or Xvfb is not installed (apt-get install obs-studio xvfb)")
    osc_port = free_port(socket.SOCK_DGRAM)
    script = ObsScript(VCAM_OBS_SCRIPT, {
        "osc_host": "127.0.0.1", "osc_port": osc_port, "prompts": "anime\nsketch\nnoir",
        SCRIPT_KEY_BINDING[0]: [{"control": True, "shift": True, "key": "OBS_KEY_F9"}],  # as OBS saves a binding
    })
    instance = start_obs(tmp_path_factory.mktemp("obs-home"), scripts=(script,), script_osc_port=osc_port)
    try:
        yield instance
    finally:
        instance.stop()
