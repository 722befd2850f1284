"""vcam control from inside OBS Studio (Tools > Scripts > +): prompt buttons and OBS hotkeys for vcam.

How it talks to vcam: it sends OSC messages over UDP to vcam's OSC control (default 127.0.0.1:9000, the preset's
[osc] section; enable it there). Why OSC and not the WebSocket: a script inside OBS cannot send a
`BroadcastCustomEvent` without logging in to OBS's own WebSocket server (it would need the password), while an
OSC message is one UDP datagram built with the standard library below. OBS's bundled Python may lack any
third-party package, so this file imports only the standard library and `obspython`.

What it offers:
- the prompt list, read from a vcam preset TOML (its [[prompts]] names; Python 3.11+ for tomllib) or typed one per
  line, with a button per prompt in the script's properties;
- OBS hotkeys (Settings > Hotkeys, "vcam: ..."): one per prompt, next, previous, pause toggle, filter toggle.
  Hotkeys are registered when the script loads: after changing the prompt list, press "Reload Scripts".
"""
from __future__ import annotations

import socket
import struct
from typing import Any, Callable

try:
    import obspython as obs  # only exists inside OBS
except ImportError:  # imported by tests and tools outside OBS: the pure functions below still work
    obs = None

DEFAULT_OSC_HOST = "127.0.0.1"
DEFAULT_OSC_PORT = 9000
HOTKEY_PREFIX = "vcam."

# hotkey name -> (description shown in OBS Settings > Hotkeys, OSC address, OSC arguments)
FIXED_ACTIONS: dict[str, tuple[str, str, tuple[Any, ...]]] = {
    "vcam.next": ("vcam: next prompt", "/vcam/next", ()),
    "vcam.previous": ("vcam: previous prompt", "/vcam/previous", ()),
    "vcam.pause": ("vcam: pause / resume", "/vcam/pause", ()),
    "vcam.filter": ("vcam: similarity filter on / off", "/vcam/filter", ()),
}


# -- pure functions (tested outside OBS) ------------------------------------------------------------------------


def _osc_string(text: str) -> bytes:
    """OSC string: UTF-8, NUL-terminated, padded with NULs to a multiple of 4 bytes."""
    raw = text.encode("utf-8") + b"\0"
    return raw + b"\0" * (-len(raw) % 4)


def encode_osc_message(address: str, args: tuple[Any, ...] = ()) -> bytes:
    """One OSC 1.0 message: address, type tags (i, f, s, T, F), then the big-endian arguments."""
    tags, payload = ",", b""
    for arg in args:
        if isinstance(arg, bool):
            tags += "T" if arg else "F"
        elif isinstance(arg, int):
            tags += "i"
            payload += struct.pack(">i", arg)
        elif isinstance(arg, float):
            tags += "f"
            payload += struct.pack(">f", arg)
        elif isinstance(arg, str):
            tags += "s"
            payload += _osc_string(arg)
        else:
            raise TypeError(f"OSC arguments are int, float, str or bool, got {type(arg).__name__}")
    return _osc_string(address) + _osc_string(tags) + payload


def send_osc(host: str, port: int, address: str, args: tuple[Any, ...] = ()) -> None:
    """Fire-and-forget UDP: if vcam is not running the datagram is simply lost, which is what a hotkey should do."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        sender.sendto(encode_osc_message(address, args), (host, port))


def prompts_from_text(text: str) -> list[str]:
    """Prompt names typed one per line (commas also separate); blanks and duplicates dropped, order kept."""
    names: list[str] = []
    for line in text.replace(",", "\n").splitlines():
        name = line.strip()
        if name and name not in names:
            names.append(name)
    return names


def prompts_from_preset(path: str) -> list[str]:
    """The [[prompts]] names of a vcam preset TOML. Raises ValueError with a one-line reason."""
    try:
        import tomllib
    except ImportError:
        raise ValueError("reading a preset needs OBS's Python 3.11 or newer; type the prompt names instead") from None
    try:
        with open(path, "rb") as preset:
            data = tomllib.load(preset)
    except OSError as error:
        raise ValueError(f"cannot read {path}: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"{path} is not valid TOML: {error}") from None
    prompts = data.get("prompts", [])
    names = [p.get("name") for p in prompts if isinstance(p, dict)] if isinstance(prompts, list) else []
    if not names or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"{path} has no [[prompts]] entries with a name")
    return names


def prompt_hotkey_name(prompt: str) -> str:
    return f"{HOTKEY_PREFIX}prompt.{prompt}"


def actions_for(prompts: list[str]) -> dict[str, tuple[str, str, tuple[Any, ...]]]:
    """Every hotkey this script registers: one per prompt, then the fixed ones."""
    actions = {prompt_hotkey_name(p): (f"vcam: prompt '{p}'", "/vcam/prompt", (p,)) for p in prompts}
    actions.update(FIXED_ACTIONS)
    return actions


# -- OBS glue ---------------------------------------------------------------------------------------------------
# OBS calls the script_* functions below; the state they share lives in one object, not in loose globals.


class _ScriptState:
    def __init__(self) -> None:
        self.host = DEFAULT_OSC_HOST
        self.port = DEFAULT_OSC_PORT
        self.prompts: list[str] = []
        self.problem = ""
        self.hotkeys: dict[str, int] = {}  # hotkey name -> OBS hotkey id

    def read_settings(self, settings: Any) -> None:
        self.host = obs.obs_data_get_string(settings, "osc_host") or DEFAULT_OSC_HOST
        self.port = obs.obs_data_get_int(settings, "osc_port") or DEFAULT_OSC_PORT
        self.problem = ""
        preset = obs.obs_data_get_string(settings, "preset_path")
        prompts = prompts_from_text(obs.obs_data_get_string(settings, "prompts"))
        if preset:
            try:
                from_preset = prompts_from_preset(preset)
                prompts = from_preset + [p for p in prompts if p not in from_preset]
            except ValueError as error:
                self.problem = str(error)
        self.prompts = prompts

    def send(self, address: str, args: tuple[Any, ...]) -> None:
        try:
            send_osc(self.host, self.port, address, args)
        except OSError as error:
            obs.script_log(obs.LOG_WARNING, f"vcam: could not send {address} to {self.host}:{self.port}: {error}")


_state = _ScriptState()


def _hotkey_callback(address: str, args: tuple[Any, ...]) -> Callable[[bool], None]:
    def on_hotkey(pressed: bool) -> None:
        if pressed:
            _state.send(address, args)

    return on_hotkey


def _button_callback(address: str, args: tuple[Any, ...]) -> Callable[[Any, Any], bool]:
    def on_click(props: Any, prop: Any) -> bool:
        _state.send(address, args)
        return False  # nothing in the properties view changed

    return on_click


def script_description() -> str:
    return (
        "<b>vcam</b>: switch the diffusion virtual camera's prompts from OBS.<br>"
        "Sends OSC to vcam (enable [osc] in the vcam preset). Hotkeys: Settings &gt; Hotkeys, \"vcam: ...\"; "
        "after changing the prompt list press Reload Scripts to register hotkeys for new prompts."
    )


def script_defaults(settings: Any) -> None:
    obs.obs_data_set_default_string(settings, "osc_host", DEFAULT_OSC_HOST)
    obs.obs_data_set_default_int(settings, "osc_port", DEFAULT_OSC_PORT)


def script_properties() -> Any:
    props = obs.obs_properties_create()
    obs.obs_properties_add_text(props, "osc_host", "vcam OSC host", obs.OBS_TEXT_DEFAULT)
    obs.obs_properties_add_int(props, "osc_port", "vcam OSC port", 1, 65535, 1)
    obs.obs_properties_add_path(props, "preset_path", "vcam preset (TOML)", obs.OBS_PATH_FILE, "TOML (*.toml)", None)
    obs.obs_properties_add_text(props, "prompts", "Prompt names (one per line)", obs.OBS_TEXT_MULTILINE)
    if _state.problem:
        obs.obs_properties_add_text(props, "problem", _state.problem, obs.OBS_TEXT_INFO)
    for name, (description, address, args) in actions_for(_state.prompts).items():
        obs.obs_properties_add_button(props, name, description.replace("vcam: ", ""), _button_callback(address, args))
    return props


def script_update(settings: Any) -> None:
    _state.read_settings(settings)


def script_load(settings: Any) -> None:
    _state.read_settings(settings)
    for name, (description, address, args) in actions_for(_state.prompts).items():
        hotkey_id = obs.obs_hotkey_register_frontend(name, description, _hotkey_callback(address, args))
        saved = obs.obs_data_get_array(settings, name)
        obs.obs_hotkey_load(hotkey_id, saved)
        obs.obs_data_array_release(saved)
        _state.hotkeys[name] = hotkey_id
    obs.script_log(obs.LOG_INFO, f"vcam: {len(_state.prompts)} prompts, sending OSC to {_state.host}:{_state.port}")


def script_save(settings: Any) -> None:
    for name, hotkey_id in _state.hotkeys.items():
        bindings = obs.obs_hotkey_save(hotkey_id)
        obs.obs_data_set_array(settings, name, bindings)
        obs.obs_data_array_release(bindings)


def script_unload() -> None:
    for hotkey_id in _state.hotkeys.values():
        obs.obs_hotkey_unregister(hotkey_id)
    _state.hotkeys.clear()
