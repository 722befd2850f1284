"""Global hotkeys under a real X server (Xvfb): keys typed with xdotool reach pynput and become commands."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from typing import Iterator

import pytest

from tests.xvfb import XvfbServer, xvfb  # noqa: F401  (fixture)
from vcam.commands import CommandQueue, QueuedCommand, SetPaused, SetSimilarityFilter, SwitchPrompt
from vcam.controls import hotkeys
from vcam.controls.hotkeys import HotkeyControl, HotkeyError, bindings_from_preset, parse_hotkey
from vcam.presets import load_preset

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def tiny_bindings() -> dict:
    return bindings_from_preset(load_preset("tiny"))


@pytest.fixture
def listening(xvfb: XvfbServer, tiny_bindings: dict, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple]:  # noqa: F811
    if shutil.which("xdotool") is None:
        pytest.skip("xdotool is not installed (apt-get install xdotool)")
    for key, value in xvfb.environment().items():
        monkeypatch.setenv(key, value)
    queue, status = CommandQueue(), []
    control = HotkeyControl(tiny_bindings, queue, on_status=status.append)
    assert control.start(), status
    try:
        yield queue, xvfb
    finally:
        control.stop()


def press(server: XvfbServer, keys: str) -> None:
    subprocess.run(["xdotool", "key", "--delay", "30", keys], env=server.environment(), check=True, timeout=10)


def next_command(queue: CommandQueue) -> QueuedCommand:
    item = queue.get(timeout=60.0)  # generous: returns as soon as the command arrives
    assert item is not None, "no command arrived within 60 s"
    return item


def test_preset_bindings_cover_prompts_navigation_pause_and_filter(tiny_bindings: dict) -> None:
    first, second = (prompt.name for prompt in load_preset("tiny").prompts[:2])
    assert tiny_bindings["<ctrl>+<alt>+1"] == SwitchPrompt(name=first)
    assert tiny_bindings["<ctrl>+<alt>+2"] == SwitchPrompt(name=second)
    assert tiny_bindings["<ctrl>+<alt>+<right>"] == SwitchPrompt(step=1)
    assert tiny_bindings["<ctrl>+<alt>+<left>"] == SwitchPrompt(step=-1)
    assert tiny_bindings["<ctrl>+<alt>+p"] == SetPaused(paused=None)
    assert tiny_bindings["<ctrl>+<alt>+f"] == SetSimilarityFilter(enabled=None)


def test_ctrl_alt_2_switches_to_the_second_prompt(listening: tuple) -> None:
    queue, server = listening
    press(server, "ctrl+alt+2")
    item = next_command(queue)
    assert item == QueuedCommand(SwitchPrompt(name=load_preset("tiny").prompts[1].name), "hotkey")


def test_ctrl_alt_arrows_step_through_prompts_and_p_toggles_pause(listening: tuple) -> None:
    queue, server = listening
    press(server, "ctrl+alt+Right")
    assert next_command(queue).command == SwitchPrompt(step=1)
    press(server, "ctrl+alt+Left")
    assert next_command(queue).command == SwitchPrompt(step=-1)
    press(server, "ctrl+alt+p")
    assert next_command(queue).command == SetPaused(paused=None)


def test_keys_without_the_modifiers_send_nothing(listening: tuple) -> None:
    queue, server = listening
    press(server, "2")
    press(server, "ctrl+2")
    assert queue.get(timeout=0.5) is None


def test_invalid_binding_is_refused_with_the_syntax() -> None:
    with pytest.raises(HotkeyError, match=r"'ctrl\+p' is not a valid hotkey.*<ctrl>\+<alt>\+p"):
        HotkeyControl({"ctrl+p": SetPaused()}, CommandQueue())


def test_without_a_display_start_says_so_in_one_line_and_does_not_raise() -> None:
    # A fresh interpreter, so no pynput backend loaded earlier in this process can hide the missing display.
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    script = (
        "from vcam.commands import CommandQueue\n"
        "from vcam.controls.hotkeys import HotkeyControl, bindings_from_preset\n"
        "from vcam.presets import load_preset\n"
        "control = HotkeyControl(bindings_from_preset(load_preset('tiny')), CommandQueue())\n"
        "print('started' if control.start() else 'not started')\n"
        "control.stop()\n"
    )
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[0].startswith("hotkeys unavailable: no X display (DISPLAY is not set)")
    assert lines[1:] == ["not started"]


def test_with_an_unreachable_display_start_says_so_and_does_not_raise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISPLAY", ":987")
    status: list[str] = []
    control = HotkeyControl({"<ctrl>+<alt>+p": SetPaused()}, CommandQueue(), on_status=status.append)
    assert control.start() is False
    assert len(status) == 1 and status[0].startswith("hotkeys unavailable: cannot open X display :987")
    control.stop()


def test_stop_ends_the_listener_thread_without_waiting_for_another_key(
    xvfb: XvfbServer, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    for key, value in xvfb.environment().items():
        monkeypatch.setenv(key, value)
    queue = CommandQueue()
    control = HotkeyControl({"<ctrl>+<alt>+p": SetPaused()}, queue, on_status=lambda line: None)
    assert control.start()
    listener = control._listener
    control.stop()  # no key is pressed: pynput's own stop() would leave its thread blocked until the next one
    assert listener is not None and not listener.is_alive() and not control.running
    press(xvfb, "ctrl+alt+p")
    assert queue.get(timeout=0.3) is None


def impatient_control(xvfb: XvfbServer, bindings: dict,  # noqa: F811
                      monkeypatch: pytest.MonkeyPatch) -> tuple[HotkeyControl, list[str]]:
    """A control on `xvfb` that gives the X server 1 s, and the status lines it says."""
    for key, value in xvfb.environment().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(hotkeys, "READY_TIMEOUT_S", 1.0)
    status: list[str] = []
    return HotkeyControl(bindings, CommandQueue(), on_status=status.append), status


def start_with_a_deadline(control: HotkeyControl) -> bool:
    outcome: list[bool] = []
    starting = threading.Thread(target=lambda: outcome.append(control.start()), daemon=True)
    starting.start()
    starting.join(timeout=60)  # generous: start() gives up after READY_TIMEOUT_S
    assert not starting.is_alive(), "start() hung on an X server that does not answer"
    return outcome[0]


def test_an_x_server_that_does_not_answer_is_given_up_in_one_line_without_hanging_start(
    xvfb: XvfbServer, tiny_bindings: dict, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    control, status = impatient_control(xvfb, tiny_bindings, monkeypatch)
    with xvfb.frozen():  # connections are accepted by the kernel, the handshake never gets a reply
        assert start_with_a_deadline(control) is False
    assert len(status) == 1 and "did not answer" in status[0] and "OSC" in status[0], status
    assert not control.running


def test_a_listener_that_never_becomes_ready_is_given_up_in_one_line_without_hanging_start(
    xvfb: XvfbServer, tiny_bindings: dict, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    # The server answers the backend check, then freezes before pynput's listener thread has connected: the
    # listener never marks itself ready (what a busy CI machine once did to a 5 s wait).
    control, status = impatient_control(xvfb, tiny_bindings, monkeypatch)
    real_check = hotkeys.hotkey_backend_problem
    freezing = xvfb.frozen()

    def check_then_freeze() -> str | None:
        problem = real_check()
        freezing.__enter__()
        return problem

    monkeypatch.setattr(hotkeys, "hotkey_backend_problem", check_then_freeze)
    try:
        assert start_with_a_deadline(control) is False
    finally:
        freezing.__exit__(None, None, None)
    assert len(status) == 1 and "did not start" in status[0] and "OSC" in status[0], status
    assert not control.running
    control.stop()  # nothing to stop: returns at once


def test_under_wayland_with_xwayland_start_warns_about_focus(
    xvfb: XvfbServer, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    for key, value in xvfb.environment().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("WAYLAND_DISPLAY", "wayland-0")
    status: list[str] = []
    control = HotkeyControl({"<ctrl>+<alt>+p": SetPaused()}, CommandQueue(), on_status=status.append)
    assert control.start()
    control.stop()
    assert status == ["hotkeys: listening for 1 combinations (Wayland session: keys are seen only while an "
                      "X11/XWayland window has focus)"]


def test_wayland_without_x_says_so_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.setenv("WAYLAND_DISPLAY", "wayland-0")
    status: list[str] = []
    assert HotkeyControl({"<ctrl>+<alt>+p": SetPaused()}, CommandQueue(), on_status=status.append).start() is False
    assert len(status) == 1 and status[0].startswith("hotkeys unavailable: Wayland does not let programs read")


@pytest.mark.parametrize("combo", ["<ctrl>+<alt>+<right>", "<ctrl>+<shift>+<f5>", "<cmd>+x", "<ctrl>++"])
def test_hotkey_parser_accepts_pynput_syntax(combo: str) -> None:
    assert parse_hotkey(combo)


@pytest.mark.parametrize("combo", ["ctrl+p", "<ctrl>+<nokey>", "<ctrl>+", "<ctrl>+<ctrl>", ""])
def test_hotkey_parser_refuses_what_pynput_refuses(combo: str) -> None:
    with pytest.raises(ValueError):
        parse_hotkey(combo)
