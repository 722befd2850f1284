"""`ObsControl`: commands sent from OBS Studio over its WebSocket server (obs-websocket protocol v5).

What OBS sends us
-----------------
A `BroadcastCustomEvent` whose `eventData` holds our command under the key "vcam", in `parse_command`'s form:

    {"vcam": {"command": "prompt", "name": "anime"}}        (request: {"eventData": {"vcam": {...}}})

The "vcam" key is what tells our events from those of other plugins and scripts, which broadcast custom events
too; events without it are ignored silently. Optionally, `scene_prompts` maps OBS scene names to prompt names, so
switching the program scene switches the prompt.

Why the guards below: obsws-python 1.8 (checked in its source) finds a callback by its exact `on_<event_name>`
name, runs callbacks on its one event thread (an exception there ends the thread, i.e. all events), has no
reconnect, and logs the password at INFO and tracebacks at ERROR. So every callback catches everything, a
supervisor thread reconnects with back-off, and obsws-python's own loggers are raised to CRITICAL.
"""
from __future__ import annotations

import logging
import socket
import threading
from dataclasses import dataclass, field
from typing import Any, Mapping

from vcam.commands import CommandError, CommandQueue, SwitchPrompt, parse_command
from vcam.controls import ControlConfigError, StatusCallback, check_known_prompt, check_port, one_line
from vcam.secrets import lookup_secret

EVENT_KEY = "vcam"
OBS_SETTINGS_HINT = "OBS > Tools > WebSocket Server Settings"


@dataclass(frozen=True)
class ObsConfig:
    """Where OBS listens and how we log in. There is deliberately no password field: see `vcam.secrets`."""

    host: str = "127.0.0.1"
    port: int = 4455
    password_env: str = "VCAM_OBS_PASSWORD"
    use_keyring: bool = True  # keyring.get_password("vcam", "obs")
    scene_prompts: Mapping[str, str] = field(default_factory=dict)  # OBS scene name -> preset prompt name
    known_prompts: tuple[str, ...] = ()  # the preset's prompt names; empty = don't check names here
    connect_timeout: float = 0.75  # per handshake step: stop() may wait for one step, and must finish within 1 s
    retry_initial: float = 0.5  # seconds before the first reconnect; doubles up to retry_max
    retry_max: float = 10.0

    def __post_init__(self) -> None:
        check_port(self.port, "OBS WebSocket")
        unknown = [p for p in self.scene_prompts.values() if self.known_prompts and p not in self.known_prompts]
        if unknown:
            raise ControlConfigError(
                f"obs.scenes maps to unknown prompt(s) {', '.join(map(repr, unknown))}; "
                f"the preset has: {', '.join(self.known_prompts)}"
            )


def describe_connect_failure(error: Exception, config: ObsConfig, password_origin: str) -> tuple[str, bool]:
    """A one-line reason for a failed connection, and whether it is an authentication problem (retrying those
    fast cannot help: the supervisor then waits `retry_max` between tries).

    obsws-python 1.8 raises a bare OBSSDKError for both; OBS closes with code 4009 on a wrong password, which
    reaches obsws-python as an unreadable identify answer ("failed to identify client").
    """
    where = f"{config.host}:{config.port}"
    text = str(error)
    if "no password provided" in text:
        return (
            f"OBS at {where} asks for a WebSocket password: set {config.password_env} (or `keyring set vcam obs`) "
            f"to the password shown in {OBS_SETTINGS_HINT}",
            True,
        )
    if "failed to identify" in text:
        origin = {"environment": f"from {config.password_env}", "keyring": "from the keyring"}.get(password_origin, "")
        return (
            f"OBS rejected the WebSocket password {origin}: set {config.password_env} to the password shown in "
            f"{OBS_SETTINGS_HINT}".replace("  ", " "),
            True,
        )
    return (
        f"OBS is not reachable at {where} ({type(error).__name__}); start OBS and enable {OBS_SETTINGS_HINT} > "
        f"Enable WebSocket server; retrying",
        False,
    )


def _quiet_obsws_logging() -> None:
    """obsws-python logs the password at INFO and a traceback per refused connection at ERROR: keep both out."""
    logging.getLogger("obsws_python").setLevel(logging.CRITICAL)


class ObsControl:
    """Receives commands from OBS and puts them on the queue; reconnects by itself when OBS (re)starts."""

    origin = "obs"

    def __init__(self, config: ObsConfig, queue: CommandQueue, on_status: StatusCallback) -> None:
        self.config = config
        self._queue = queue
        self._on_status = on_status
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._lock = threading.Lock()  # guards _client between the supervisor and stop()
        self._client: Any = None
        self._thread: threading.Thread | None = None
        self.connection_attempts = 0
        self._password_origin = "none"  # where the last login's password came from, for the failure message

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        """Block until the control is logged in to OBS (tests and `vcam doctor` use this)."""
        return self._connected.wait(timeout)

    def start(self) -> None:
        if self._thread is not None:
            return
        _quiet_obsws_logging()
        self._stop.clear()
        self._thread = threading.Thread(target=self._supervise, name="vcam-obs-control", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Disconnect and join the threads; returns within about a second even mid-handshake."""
        self._stop.set()
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            _close_client(client)
        if self._thread is not None:
            self._thread.join(timeout=3 * self.config.connect_timeout + 0.5)
            self._thread = None
        self._connected.clear()

    # -- connection supervisor ------------------------------------------------------------------------------

    def _supervise(self) -> None:
        """Connect, wait for the event thread to end (OBS quit or network gone), repeat with back-off."""
        delay = self.config.retry_initial
        last_report = ""
        while not self._stop.is_set():
            try:
                client = self._connect()
            except Exception as error:  # every failure is reported as a line; none may end the supervisor
                report, is_auth = describe_connect_failure(error, self.config, self._password_origin)
                if report != last_report:  # one line per kind of problem, not one per retry
                    self._on_status(one_line(report))
                    last_report = report
                self._stop.wait(self.config.retry_max if is_auth else delay)
                delay = min(delay * 2, self.config.retry_max)
                continue
            with self._lock:
                if self._stop.is_set():
                    _close_client(client)
                    return
                self._client = client
            delay, last_report = self.config.retry_initial, ""
            self._connected.set()
            self._on_status(f"OBS: connected to {self.config.host}:{self.config.port}")
            while not self._stop.is_set() and client.worker.is_alive():
                client.worker.join(timeout=0.2)
            self._connected.clear()
            with self._lock:
                if self._client is client:
                    self._client = None
            _close_client(client)
            if not self._stop.is_set():
                self._on_status(f"OBS: connection to {self.config.host}:{self.config.port} lost; reconnecting")

    def _connect(self) -> Any:
        import obsws_python
        from obsws_python.subs import Subs

        self.connection_attempts += 1
        password = lookup_secret(self.config.password_env, "obs", self.config.use_keyring)
        self._password_origin = password.origin
        client = obsws_python.EventClient(
            host=self.config.host,
            port=self.config.port,
            password=password.value,
            timeout=self.config.connect_timeout,
            subs=Subs.GENERAL | Subs.SCENES,  # CustomEvent is a General event
        )
        # obsws-python dispatches on the function's __name__: these two names must stay exactly as they are.
        client.callback.register([self.on_custom_event, self.on_current_program_scene_changed])
        return client

    # -- event callbacks (run on obsws-python's event thread: they must never raise) ------------------------

    def on_custom_event(self, data: Any) -> None:
        try:
            self.handle_event_data({EVENT_KEY: getattr(data, EVENT_KEY)} if hasattr(data, EVENT_KEY) else {})
        except Exception as error:  # a bug here must not end the event thread
            self._on_status(one_line(f"OBS: could not handle a custom event: {type(error).__name__}: {error}"))

    def on_current_program_scene_changed(self, data: Any) -> None:
        try:
            prompt = self.config.scene_prompts.get(getattr(data, "scene_name", None))
            if prompt is not None:
                self._queue.put(SwitchPrompt(name=prompt), self.origin)
        except Exception as error:
            self._on_status(one_line(f"OBS: could not handle a scene change: {type(error).__name__}: {error}"))

    def handle_event_data(self, event_data: Mapping[str, Any]) -> None:
        """Apply one custom event's `eventData`: ignore it unless it has our key, report it if it is bad."""
        if EVENT_KEY not in event_data:
            return
        try:
            command = check_known_prompt(parse_command(event_data[EVENT_KEY]), self.config.known_prompts)
        except CommandError as error:
            self._on_status(one_line(f"OBS: ignored a command: {error}"))
            return
        self._queue.put(command, self.origin)


def _close_client(client: Any) -> None:
    """Shut the socket down first: closing alone does not wake obsws-python's thread blocked in recv()."""
    ws = client.base_client.ws
    try:
        if ws.sock is not None:
            ws.sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        ws.shutdown()
    except Exception:
        pass
    client.worker.join(timeout=1.0)
