"""`OscControl`: commands over OSC (UDP), for TouchOSC, Max/MSP, TouchDesigner, Stream Deck plugins and our OBS
script.

Addresses (arguments in brackets are optional):

    /vcam/prompt "name"       /vcam/next              /vcam/previous
    /vcam/text "free text"    /vcam/blend "name" [30]
    /vcam/pause [1|0]         /vcam/resume            /vcam/filter [1|0]   (no argument toggles)
    /vcam/reload              /vcam/quit

Each address is turned into `parse_command`'s JSON form, so OSC accepts exactly what OBS and scripts accept and
the validation lives in one place. Many OSC senders only send floats, so whole floats count as integers.
The server handles datagrams one at a time on one thread (python-osc's blocking server on a thread we own):
a thread per datagram could reorder a fast "prompt a" / "prompt b" burst.

Bundle time tags are ignored: a timed bundle runs when it arrives. python-osc would otherwise sleep in the receive
thread until the tag's time, so one bundle timed an hour ahead would freeze every control for an hour; a live
camera has no use for scheduled commands, and executing now keeps a sender's intent (the command happens). A
bundle timed more than a second ahead is said once. The receive thread never sleeps or waits: commands go on the
bounded `CommandQueue`, where quit and pause overtake a backlog.
"""
from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from pythonosc.dispatcher import Dispatcher
from pythonosc.osc_bundle import OscBundle, ParseError
from pythonosc.osc_server import BlockingOSCUDPServer

from vcam.commands import CommandError, CommandQueue, parse_command
from vcam.controls import ControlConfigError, StatusCallback, check_known_prompt, check_port, one_line

# OSC address -> (parse_command's command name, the names of its positional arguments)
OSC_ADDRESSES: dict[str, tuple[str, tuple[str, ...]]] = {
    "/vcam/prompt": ("prompt", ("name",)),
    "/vcam/next": ("next", ()),
    "/vcam/previous": ("previous", ()),
    "/vcam/text": ("text", ("text",)),
    "/vcam/blend": ("blend", ("name", "frames")),
    "/vcam/pause": ("pause", ("value",)),
    "/vcam/resume": ("resume", ()),
    "/vcam/filter": ("filter", ("value",)),
    "/vcam/reload": ("reload", ()),
    "/vcam/quit": ("quit", ()),
}


@dataclass(frozen=True)
class OscConfig:
    """Where to listen. 127.0.0.1 by default: OSC has no authentication, so listening on the network is opt-in."""

    host: str = "127.0.0.1"
    port: int = 9000  # 0 picks a free port (see OscControl.address)
    known_prompts: tuple[str, ...] = ()  # the preset's prompt names; empty = don't check names here

    def __post_init__(self) -> None:
        check_port(self.port, "OSC", allow_any=True)


def osc_payload(address: str, args: tuple[Any, ...]) -> dict[str, Any]:
    """The `parse_command` form of one OSC message; raises CommandError for an unknown address or extra args."""
    if address not in OSC_ADDRESSES:
        raise CommandError(f"unknown OSC address {address!r}; known: {', '.join(OSC_ADDRESSES)}")
    command, names = OSC_ADDRESSES[address]
    if len(args) > len(names):
        wanted = " ".join(f"<{name}>" for name in names) or "no arguments"
        raise CommandError(f"{address} takes {wanted}, got {len(args)} argument(s)")
    values = [int(a) if isinstance(a, float) and a.is_integer() else a for a in args]
    return {"command": command, **dict(zip(names, values))}


class _ReportingServer(BlockingOSCUDPServer):
    """socketserver prints a traceback to stderr when a handler fails, and python-osc drops non-OSC datagrams
    without a word; both become one status line here."""

    def __init__(self, address: tuple[str, int], dispatcher: Dispatcher, on_status: StatusCallback) -> None:
        self.on_status = on_status
        self._said_future_bundle = False
        super().__init__(address, dispatcher)

    def verify_request(self, request: Any, client_address: Any) -> bool:
        ok = super().verify_request(request, client_address)
        if not ok:
            self.on_status(f"OSC: ignored a datagram from {client_address[0]} that is not an OSC message")
        elif not self._said_future_bundle:
            self._note_future_bundle(request[0])
        return ok

    def _note_future_bundle(self, data: bytes) -> None:
        if not OscBundle.dgram_is_bundle(data):
            return
        try:
            ahead = OscBundle(data).timestamp - time.time()
        except ParseError:  # a malformed bundle is python-osc's to drop (and say); this is only a notice
            return
        if ahead > 1.0:
            self._said_future_bundle = True
            self.on_status(f"OSC: a bundle timed {ahead:.0f} s ahead runs now; vcam ignores OSC time tags "
                           "(said once)")

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        self.on_status(one_line(f"OSC: could not handle a message: {type(error).__name__}: {error}"))


class OscControl:
    """Listens for OSC messages on UDP and puts the commands they name on the queue."""

    origin = "osc"

    def __init__(self, config: OscConfig, queue: CommandQueue, on_status: StatusCallback) -> None:
        self.config = config
        self._queue = queue
        self._on_status = on_status
        self._server: _ReportingServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) actually bound: port 0 in the config picks a free one (tests)."""
        if self._server is None:
            return (self.config.host, self.config.port)
        return self._server.server_address[:2]

    def start(self) -> None:
        """Bind the UDP port; a port in use is a ControlConfigError naming the setting to change."""
        if self._server is not None:
            return
        dispatcher = Dispatcher(strict_timing=False)  # never sleep in the receive thread (see the module doc)
        dispatcher.set_default_handler(self._on_message)
        try:
            self._server = _ReportingServer((self.config.host, self.config.port), dispatcher, self._on_status)
        except OSError as error:
            raise ControlConfigError(
                f"cannot listen for OSC on {self.config.host}:{self.config.port} ({error.strerror}); "
                f"choose another [osc] port in the preset"
            ) from None
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, name="vcam-osc-control", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and release the port; returns within ~0.1 s (the poll interval)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
            self._thread = None

    def _on_message(self, address: str, *args: Any) -> None:
        try:
            payload = osc_payload(address, args)
            command = check_known_prompt(parse_command(payload), self.config.known_prompts)
        except CommandError as error:
            self._on_status(one_line(f"OSC: ignored {address}: {error}"))
            return
        self._queue.put(command, self.origin)
