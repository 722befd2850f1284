"""`ObsControl`: commands sent from OBS Studio over its WebSocket server (obs-websocket protocol v5).

What OBS sends us
-----------------
A `BroadcastCustomEvent` whose `eventData` holds our command under the key "vcam", in `parse_command`'s form:

    {"vcam": {"command": "prompt", "name": "anime"}}        (request: {"eventData": {"vcam": {...}}})

The "vcam" key is what tells our events from those of other plugins and scripts, which broadcast custom events
too; events without it are ignored silently. Optionally, `scene_prompts` maps OBS scene names to prompt names, so
switching the program scene switches the prompt.

Why we read events ourselves: obsws-python 1.8 (checked in its source) parses each event on its one event thread
and turns its data into a dataclass, so an event whose data has a key such as `__slots__`, or JSON nested thousands
deep (RecursionError), ends that thread with a traceback, and every event after it is lost until a reconnect. It
also never notices a connection that goes silent without a close (OBS frozen, a sleeping laptop, Wi-Fi gone). So
obsws-python only does the handshake and login (`ObsClient`); our supervisor thread then reads the WebSocket
itself: each message is parsed in a guard (a bad one is one line, the next one is read), only the two events we use
are looked at, as plain dicts, and after `HEARTBEAT_SECONDS` of silence a WebSocket ping is sent: with no frame at
all (not even the pong) for `SILENCE_LIMIT_SECONDS`, the connection is declared dead and reopened with back-off, as
after an OBS restart. obsws-python logs the password at INFO and tracebacks at ERROR: its loggers are held at
CRITICAL.
"""
from __future__ import annotations

import json
import logging
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

from vcam.commands import CommandError, CommandQueue, SwitchPrompt, parse_command
from vcam.controls import ControlConfigError, StatusCallback, check_known_prompt, check_port, one_line
from vcam.secrets import lookup_secret

log = logging.getLogger("vcam")

EVENT_KEY = "vcam"
OBS_SETTINGS_HINT = "OBS > Tools > WebSocket Server Settings"
START_OBS_FIX = f"start OBS and enable {OBS_SETTINGS_HINT} > Enable WebSocket server"
HEARTBEAT_SECONDS = 2.0  # silence after which a WebSocket ping asks OBS for a sign of life
SILENCE_LIMIT_SECONDS = 6.0  # no frame at all for this long (pong included): the connection is dead
RECEIVE_POLL_SECONDS = 0.5  # how often the reader looks at the clock and the stop flag
OBS_EVENT_OPCODE = 5  # obs-websocket v5 "Event" message


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


@dataclass(frozen=True)
class ConnectFailure:
    """Why a connection to OBS failed, and the fix, apart: the control says them as one line, `vcam doctor` puts
    the fix after its `->`. `is_auth`: a password problem (retrying fast cannot help)."""

    problem: str
    fix: str
    is_auth: bool

    def line(self) -> str:
        return f"{self.problem}: {self.fix}" if self.is_auth else f"{self.problem}; {self.fix}; retrying"


def explain_connect_failure(error: Exception, config: ObsConfig, password_origin: str) -> ConnectFailure:
    """obsws-python 1.8 raises a bare OBSSDKError for both password problems; OBS closes with code 4009 on a wrong
    password, which reaches obsws-python as an unreadable identify answer ("failed to identify client")."""
    where = f"{config.host}:{config.port}"
    text = str(error)
    if "no password provided" in text:
        return ConnectFailure(f"OBS at {where} asks for a WebSocket password",
                              f"set {config.password_env} (or `keyring set vcam obs`) to the password shown in "
                              f"{OBS_SETTINGS_HINT}", True)
    if "failed to identify" in text:
        origin = {"environment": f" from {config.password_env}", "keyring": " from the keyring"}.get(password_origin, "")
        return ConnectFailure(f"OBS rejected the WebSocket password{origin}",
                              f"set {config.password_env} to the password shown in {OBS_SETTINGS_HINT}", True)
    return ConnectFailure(f"OBS is not reachable at {where} ({type(error).__name__})",
                          START_OBS_FIX, False)


def quiet_obsws_logging() -> None:
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
        quiet_obsws_logging()
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
        """Connect, read events until the connection ends (OBS quit, frozen, or the network gone), repeat with
        back-off."""
        delay = self.config.retry_initial
        last_report = ""
        while not self._stop.is_set():
            try:
                client = self._connect()
            except Exception as error:  # every failure is reported as a line; none may end the supervisor
                failure = explain_connect_failure(error, self.config, self._password_origin)
                report = failure.line()
                if report != last_report:  # one line per kind of problem, not one per retry
                    self._on_status(one_line(report))
                    last_report = report
                self._stop.wait(self.config.retry_max if failure.is_auth else delay)
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
            why = self._listen(client.ws)
            self._connected.clear()
            with self._lock:
                if self._client is client:
                    self._client = None
            _close_client(client)
            if not self._stop.is_set():
                self._on_status(f"OBS: connection to {self.config.host}:{self.config.port} lost ({why}); reconnecting")

    def _connect(self) -> Any:
        """Open the WebSocket and log in (obsws-python's `ObsClient`); returns the logged-in client."""
        from obsws_python.baseclient import ObsClient
        from obsws_python.subs import Subs

        self.connection_attempts += 1
        password = lookup_secret(self.config.password_env, "obs", self.config.use_keyring)
        self._password_origin = password.origin
        client = ObsClient(
            host=self.config.host,
            port=self.config.port,
            password=password.value,
            timeout=self.config.connect_timeout,
            subs=Subs.GENERAL | Subs.SCENES,  # CustomEvent is a General event
        )
        try:
            client.authenticate()
        except BaseException:
            _close_client(client)
            raise
        return client

    # -- reading events (on the supervisor thread: nothing a stranger sends may end it) ---------------------

    def _listen(self, ws: Any) -> str:
        """Handle events until the connection ends or `stop()`; returns why it ended, for the status line."""
        from websocket import ABNF, WebSocketException, WebSocketTimeoutException

        try:
            ws.settimeout(RECEIVE_POLL_SECONDS)
        except (OSError, AttributeError) as error:  # stop() closed the socket just after the login
            return type(error).__name__
        last_heard = last_ping = time.monotonic()
        while not self._stop.is_set():
            try:
                opcode, frame = ws.recv_data_frame(control_frame=True)  # pongs count as signs of life
            except WebSocketTimeoutException:  # the frame reader keeps a partial frame and resumes next call
                now = time.monotonic()
                if now - last_heard > SILENCE_LIMIT_SECONDS:
                    return f"no answer for {now - last_heard:.0f} s"
                if now - max(last_heard, last_ping) > HEARTBEAT_SECONDS:
                    last_ping = now
                    try:
                        ws.ping()
                    except (WebSocketException, OSError) as error:
                        return type(error).__name__
                continue
            except (WebSocketException, OSError, ValueError) as error:  # closed, reset, or not WebSocket at all
                return type(error).__name__
            last_heard = time.monotonic()
            if opcode == ABNF.OPCODE_CLOSE:
                return "closed by OBS"
            if opcode == ABNF.OPCODE_TEXT:
                self.handle_message(frame.data)
        return "stopped"

    def handle_message(self, raw: bytes | str) -> None:
        """One obs-websocket message: the events we use are applied, anything malformed is one line, nothing
        raises (whatever a plugin or a stranger broadcasts through OBS)."""
        try:
            message = json.loads(raw)
        except (ValueError, RecursionError) as error:  # RecursionError: JSON nested thousands deep
            self._on_status(one_line(f"OBS: ignored a message that is not usable JSON ({type(error).__name__})"))
            return
        try:
            if not isinstance(message, dict) or message.get("op") != OBS_EVENT_OPCODE:
                return  # e.g. a request's answer
            event = message.get("d")
            event_type = event.get("eventType") if isinstance(event, dict) else None
            data = event.get("eventData") if isinstance(event, dict) else None
            if not isinstance(data, dict):
                return
            if event_type == "CustomEvent":
                self.handle_event_data(data)
            elif event_type == "CurrentProgramSceneChanged":
                scene = data.get("sceneName")
                prompt = self.config.scene_prompts.get(scene) if isinstance(scene, str) else None
                if prompt is not None:
                    self._queue.put(SwitchPrompt(name=prompt), self.origin)
        except Exception as error:  # noqa: BLE001 - a bug here must not end the reader (RecursionError included)
            self._on_status(one_line(f"OBS: could not handle an event: {type(error).__name__}: {error}"))

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
    """Shut the socket down first: closing alone does not wake a thread blocked in recv()."""
    ws = client.ws
    try:
        if ws.sock is not None:
            ws.sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    from websocket import WebSocketException

    try:
        ws.shutdown()
    except (WebSocketException, OSError) as error:  # closing a connection that already broke
        log.debug("OBS: closing the WebSocket: %s", error)
