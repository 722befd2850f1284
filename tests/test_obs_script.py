"""The in-OBS script `vcam/obs/vcam_obs_script.py`: loaded into the real OBS of the session (its hotkeys fired
through obs-websocket's TriggerHotkeyByName) and its pure parts run here, all received by a real OscControl."""
from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from types import ModuleType
from typing import Iterator

import pytest
from pythonosc.osc_message import OscMessage

from tests.obs_harness import REPO_ROOT, SCRIPT_KEY_BINDING, VCAM_OBS_SCRIPT, ObsInstance
from tests.test_osc_control import StatusLines, queue, status  # noqa: F401  (shared fixtures)
from vcam.commands import CommandQueue, SetPaused, SetSimilarityFilter, SwitchPrompt
from vcam.controls.osc import OSC_ADDRESSES, OscConfig, OscControl

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def script() -> ModuleType:
    """The script as OBS would load it, but outside OBS (no `obspython`): only its pure functions are usable."""
    spec = importlib.util.spec_from_file_location("vcam_obs_script", VCAM_OBS_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def receiver(queue: CommandQueue, status: StatusLines) -> Iterator[OscControl]:
    control = OscControl(OscConfig(port=0), queue, status)
    control.start()
    yield control
    control.stop()


def received(queue: CommandQueue):
    item = queue.get(timeout=60.0)  # generous: returns as soon as the command arrives
    assert item is not None, "vcam received nothing within 60 s"
    return item.command


def test_the_script_imports_nothing_outside_the_standard_library_and_obspython() -> None:
    source = VCAM_OBS_SCRIPT.read_text()
    imported = {line.split()[1].split(".")[0] for line in source.splitlines() if line.startswith(("import ", "from "))}
    assert imported <= {"__future__", "socket", "struct", "typing", "obspython"}, imported


@pytest.mark.parametrize(
    "address, args",
    [("/vcam/next", ()), ("/vcam/prompt", ("anime",)), ("/vcam/prompt", ("nuit étoilée",)),
     ("/vcam/blend", ("noir", 30)), ("/vcam/pause", (True,)), ("/vcam/pause", (False,)), ("/vcam/x", (0.5, "abc"))],
)
def test_hand_encoded_osc_messages_parse_with_python_osc(script, address, args) -> None:
    message = OscMessage(script.encode_osc_message(address, args))
    assert message.address == address
    assert tuple(message.params) == args


def test_every_osc_address_the_script_sends_is_one_vcam_listens_to(script) -> None:
    addresses = {address for _, address, _ in script.actions_for(["anime"]).values()}
    assert addresses <= set(OSC_ADDRESSES), addresses - set(OSC_ADDRESSES)


def test_messages_sent_by_the_script_become_commands_in_vcam(script, receiver, queue, status) -> None:
    host, port = receiver.address
    for _, address, args in script.actions_for(["anime", "sketch"]).values():
        script.send_osc(host, port, address, args)
    # Every message becomes its command; pause may overtake commands queued before it (the queue's priority).
    got = [received(queue) for _ in range(6)]
    assert sorted(map(repr, got)) == sorted(map(repr, [
        SwitchPrompt(name="anime"), SwitchPrompt(name="sketch"), SwitchPrompt(step=1), SwitchPrompt(step=-1),
        SetPaused(paused=None), SetSimilarityFilter(enabled=None),
    ]))
    assert status.lines == []


def test_typed_prompt_list_is_split_by_lines_or_commas_without_blanks_or_repeats(script) -> None:
    assert script.prompts_from_text(" anime \n\nsketch, noir\nanime\n") == ["anime", "sketch", "noir"]


def test_prompt_names_are_read_from_a_preset_file(script, tmp_path: Path) -> None:
    preset = tmp_path / "mine.toml"
    preset.write_text('[osc]\nport = 9001\n\n[[prompts]]\nname = "ink"\ntext = "ink drawing"\n\n'
                      '[[prompts]]\nname = "clay"\ntext = "claymation"\n')
    assert script.prompts_from_preset(str(preset)) == ["ink", "clay"]


@pytest.mark.parametrize("preset", sorted((REPO_ROOT / "presets").glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_preset_gives_the_script_its_prompt_names(script, preset: Path) -> None:
    names = script.prompts_from_preset(str(preset))
    assert names and len(set(names)) == len(names)


@pytest.mark.parametrize(
    "content, fragment",
    [(None, "cannot read"), ("[[prompts]\nname=", "is not valid TOML"), ('[model]\nmodel = "tiny"\n', "no [[prompts]]")],
)
def test_an_unusable_preset_is_one_line_saying_why(script, tmp_path: Path, content, fragment) -> None:
    path = tmp_path / "preset.toml"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ValueError) as error:
        script.prompts_from_preset(str(path))
    assert fragment in str(error.value) and "\n" not in str(error.value)


# -- inside the real OBS --------------------------------------------------------------------------------------


@pytest.fixture
def vcam_osc(obs_instance: ObsInstance, queue: CommandQueue, status: StatusLines) -> Iterator[OscControl]:
    """vcam's OSC control on the port the script in OBS was configured to send to."""
    control = OscControl(OscConfig(port=obs_instance.script_osc_port), queue, status)
    control.start()
    yield control
    control.stop()


def test_obs_loads_the_script_and_lists_its_hotkeys(obs_instance) -> None:
    assert "Loaded python script: vcam_obs_script.py" in obs_instance.log_text()
    with obs_instance.client() as client:
        hotkeys = set(client.send("GetHotkeyList", raw=True)["hotkeys"])
    expected = {"vcam.prompt.anime", "vcam.prompt.sketch", "vcam.prompt.noir", "vcam.next", "vcam.previous",
                "vcam.pause", "vcam.filter"}
    assert expected <= hotkeys, expected - hotkeys


@pytest.mark.parametrize(
    "hotkey, expected",
    [("vcam.prompt.sketch", SwitchPrompt(name="sketch")), ("vcam.next", SwitchPrompt(step=1)),
     ("vcam.previous", SwitchPrompt(step=-1)), ("vcam.pause", SetPaused(paused=None)),
     ("vcam.filter", SetSimilarityFilter(enabled=None))],
)
def test_an_obs_hotkey_of_the_script_sends_its_command_to_vcam(obs_instance, vcam_osc, queue, hotkey, expected) -> None:
    with obs_instance.client() as client:
        client.send("TriggerHotkeyByName", {"hotkeyName": hotkey})
    item = queue.get(timeout=60.0)
    assert item is not None and item.command == expected and item.origin == "osc"


@pytest.mark.skipif(shutil.which("xdotool") is None, reason="xdotool is not installed (apt-get install xdotool)")
def test_a_real_key_press_bound_in_obs_switches_the_vcam_prompt(obs_instance, vcam_osc, queue) -> None:
    """The whole path a user takes: X key press -> OBS global hotkey -> the script -> OSC -> vcam's queue."""
    hotkey, keys = SCRIPT_KEY_BINDING
    obs_instance.press_keys(keys)
    item = queue.get(timeout=60.0)
    assert item is not None and item.command == SwitchPrompt(name=hotkey.rsplit(".", 1)[1])
