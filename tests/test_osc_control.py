"""OscControl with a real python-osc UDP client on 127.0.0.1: every address, bad input, stop and port errors."""
from __future__ import annotations

import socket
import threading
import time
from typing import Iterator

import pytest
from pythonosc.udp_client import SimpleUDPClient

from vcam.commands import (
    BlendToPrompt, CommandQueue, Quit, ReloadPreset, SetPaused, SetPromptText, SetSimilarityFilter, SwitchPrompt,
)
from vcam.controls import ControlConfigError
from vcam.controls.osc import OscConfig, OscControl

pytestmark = pytest.mark.timeout(60)


class StatusLines:
    """Collects on_status lines and lets a test wait for the next one."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._changed = threading.Condition()

    def __call__(self, line: str) -> None:
        with self._changed:
            self.lines.append(line)
            self._changed.notify_all()

    def wait_for(self, count: int, timeout: float = 3.0) -> list[str]:
        with self._changed:
            self._changed.wait_for(lambda: len(self.lines) >= count, timeout)
            return list(self.lines)


@pytest.fixture
def status() -> StatusLines:
    return StatusLines()


@pytest.fixture
def queue() -> CommandQueue:
    return CommandQueue()


@pytest.fixture
def control(queue: CommandQueue, status: StatusLines) -> Iterator[OscControl]:
    osc = OscControl(OscConfig(port=0, known_prompts=("anime", "sketch")), queue, status)
    osc.start()
    yield osc
    osc.stop()


@pytest.fixture
def client(control: OscControl) -> SimpleUDPClient:
    host, port = control.address
    return SimpleUDPClient(host, port)


def next_command(queue: CommandQueue):
    item = queue.get(timeout=3.0)
    assert item is not None, "no command arrived within 3 s"
    assert item.origin == "osc"
    return item.command


@pytest.mark.parametrize(
    "address, args, expected",
    [
        ("/vcam/prompt", ["sketch"], SwitchPrompt(name="sketch")),
        ("/vcam/next", [], SwitchPrompt(step=1)),
        ("/vcam/previous", [], SwitchPrompt(step=-1)),
        ("/vcam/text", ["a charcoal drawing"], SetPromptText(text="a charcoal drawing")),
        ("/vcam/blend", ["anime", 45], BlendToPrompt(name="anime", frames=45)),
        ("/vcam/blend", ["anime"], BlendToPrompt(name="anime", frames=30)),
        ("/vcam/blend", ["anime", 12.0], BlendToPrompt(name="anime", frames=12)),  # float-only senders
        ("/vcam/pause", [1], SetPaused(paused=True)),
        ("/vcam/pause", [0], SetPaused(paused=False)),
        ("/vcam/pause", [], SetPaused(paused=None)),
        ("/vcam/pause", [True], SetPaused(paused=True)),
        ("/vcam/resume", [], SetPaused(paused=False)),
        ("/vcam/filter", [0], SetSimilarityFilter(enabled=False)),
        ("/vcam/filter", [1.0], SetSimilarityFilter(enabled=True)),
        ("/vcam/filter", [], SetSimilarityFilter(enabled=None)),
        ("/vcam/reload", [], ReloadPreset()),
        ("/vcam/quit", [], Quit()),
    ],
)
def test_each_osc_address_puts_its_command_on_the_queue(client, queue, address, args, expected) -> None:
    client.send_message(address, args)
    assert next_command(queue) == expected


def test_commands_arrive_in_the_order_they_were_sent(client, queue) -> None:
    for name in ("anime", "sketch", "anime", "sketch"):
        client.send_message("/vcam/prompt", name)
    assert [next_command(queue).name for _ in range(4)] == ["anime", "sketch", "anime", "sketch"]


@pytest.mark.parametrize(
    "address, args, fragment",
    [
        ("/vcam/nonsense", [], "unknown OSC address '/vcam/nonsense'"),
        ("/other/app", [1], "unknown OSC address"),
        ("/vcam/prompt", [], "needs a non-empty string 'name'"),
        ("/vcam/prompt", ["watercolour"], "unknown prompt 'watercolour'; the preset has: anime, sketch"),
        ("/vcam/prompt", [3], "needs a non-empty string 'name'"),
        ("/vcam/next", [1], "/vcam/next takes no arguments, got 1"),
        ("/vcam/blend", ["anime", 5000], "'frames' must be a whole number from 0 to 600"),
        ("/vcam/pause", ["maybe"], "'value' must be true, false or \"toggle\""),
        ("/vcam/text", ["x" * 1001], "at most 1000 are accepted"),
    ],
)
def test_bad_message_gives_one_line_and_the_control_keeps_working(
    client, queue, status, address, args, fragment
) -> None:
    client.send_message(address, args)
    lines = status.wait_for(1)
    assert len(lines) == 1 and fragment in lines[0], lines
    assert "\n" not in lines[0] and len(lines[0]) <= 300
    client.send_message("/vcam/next", [])
    assert next_command(queue) == SwitchPrompt(step=1)
    assert queue.drain() == []


def test_a_datagram_that_is_not_osc_is_reported_not_fatal(control, client, queue, status) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
        raw.sendto(b"hello, not OSC", control.address)
    assert "not an OSC message" in status.wait_for(1)[0]
    client.send_message("/vcam/quit", [])
    assert next_command(queue) == Quit()


def test_stop_returns_at_once_and_frees_the_port(queue, status) -> None:
    osc = OscControl(OscConfig(port=0), queue, status)
    osc.start()
    port = osc.address[1]
    started = time.monotonic()
    osc.stop()
    assert time.monotonic() - started < 3.0  # not a bundle's wait or a blocked receive
    assert not any(t.name == "vcam-osc-control" and t.is_alive() for t in threading.enumerate())
    again = OscControl(OscConfig(port=port), queue, status)
    again.start()  # would raise if the port were still held
    again.stop()


def test_port_in_use_is_a_one_line_error_naming_the_setting(control, queue, status) -> None:
    busy = OscControl(OscConfig(port=control.address[1]), queue, status)
    with pytest.raises(ControlConfigError, match=r"cannot listen for OSC on 127\.0\.0\.1:\d+ .*\[osc\] port"):
        busy.start()


def test_port_out_of_range_is_refused_at_configuration() -> None:
    with pytest.raises(ControlConfigError, match="OSC port must be a whole number from 1 to 65535"):
        OscConfig(port=70000)


def osc_string(text: str) -> bytes:
    """An OSC-string: ASCII, NUL-terminated, padded to a multiple of 4 bytes (OSC 1.0 spec)."""
    raw = text.encode("ascii") + b"\0"
    return raw + b"\0" * (-len(raw) % 4)


def timed_bundle(address: str, seconds_ahead: float) -> bytes:
    """Raw bytes of an OSC bundle holding one argument-less message, its NTP time tag `seconds_ahead` from now."""
    import struct

    ntp = time.time() + 2_208_988_800 + seconds_ahead  # NTP counts from 1900
    message = osc_string(address) + osc_string(",")
    return (osc_string("#bundle") + struct.pack(">II", int(ntp), int((ntp % 1) * 2**32))
            + struct.pack(">i", len(message)) + message)


def test_a_bundle_timed_an_hour_ahead_runs_now_and_never_freezes_the_receiver(control, client, queue, status) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
        raw.sendto(timed_bundle("/vcam/next", 3600), control.address)
        raw.sendto(timed_bundle("/vcam/previous", 7200), control.address)
    client.send_message("/vcam/quit", [])
    # All three arrive at once: the receiver did not sleep until the bundles' time (quit may overtake the others).
    received = [next_command(queue) for _ in range(3)]
    assert sorted(map(repr, received)) == sorted(map(repr, [SwitchPrompt(step=1), SwitchPrompt(step=-1), Quit()]))
    assert received.index(SwitchPrompt(step=1)) < received.index(SwitchPrompt(step=-1))
    lines = status.wait_for(1)
    assert len(lines) == 1 and "timed 3600 s ahead runs now" in lines[0], lines
    started = time.monotonic()
    control.stop()
    assert time.monotonic() - started < 3.0  # the receiver never sleeps until a bundle's time (3600 s)


def wait_until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_pause_and_quit_overtake_a_burst_of_prompt_texts_and_the_queue_stays_bounded(
    control, client, queue, caplog
) -> None:
    texts = [f"style number {i}" for i in range(60)]
    for text in texts:
        client.send_message("/vcam/text", text)
    wait_until(lambda: len(queue) + queue.dropped == len(texts))  # every text reached the queue
    client.send_message("/vcam/pause", [1])
    client.send_message("/vcam/quit", [])
    wait_until(lambda: len(queue) + queue.dropped == len(texts) + 2)
    taken = [next_command(queue) for _ in range(len(queue))]
    assert taken[:2] == [SetPaused(paused=True), Quit()]
    # What is left of the burst is its newest texts, in order: the superseded ones were dropped, said once.
    assert taken[2:] == [SetPromptText(text) for text in texts[-4:]]
    assert sum("superseded" in record.getMessage() for record in caplog.records) == 1
