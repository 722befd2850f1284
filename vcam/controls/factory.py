"""Which controls a run starts: hotkeys and the tray from the service's options, OBS and OSC from the run's
settings (the preset's [obs] / [osc] merged with `--obs` / `--osc` once, in `vcam.settings`).

Each control is optional and fails soft: a control that cannot start here (no display for hotkeys or the tray,
OBS not running yet) says so in one line and the stream carries on.
"""
from __future__ import annotations

from typing import Any, Protocol

from vcam.logs import log_traceback
from vcam.presets import Preset


class ServiceView(Protocol):
    """What the controls need from the service (kept narrow so the controls stay testable on their own)."""

    queue: Any
    settings: Any
    prompt_label: str
    paused: bool
    filter_enabled: bool

    def notice(self, line: str) -> None: ...
    def ensure_qt_host(self) -> Any: ...
    def open_preview(self) -> None: ...


class _TrayHandle:
    """Gives the tray the same stop() as the other controls."""

    def __init__(self, tray: Any) -> None:
        self.tray = tray

    def stop(self) -> None:
        self.tray.close()


def _start_hotkeys(service: ServiceView, preset: Preset) -> Any | None:
    from vcam.controls.hotkeys import HotkeyControl, bindings_from_preset

    control = HotkeyControl(bindings_from_preset(preset), service.queue, on_status=service.notice)
    return control if control.start() else None


def _start_obs(service: ServiceView, names: tuple[str, ...]) -> Any:
    from vcam.controls.obs import ObsConfig, ObsControl

    obs = service.settings.obs
    config = ObsConfig(host=obs.host, port=obs.port, scene_prompts=dict(obs.scenes), known_prompts=names)
    control = ObsControl(config, service.queue, on_status=service.notice)
    control.start()
    return control


def _start_osc(service: ServiceView, names: tuple[str, ...]) -> Any:
    from vcam.controls.osc import OscConfig, OscControl

    osc = service.settings.osc
    control = OscControl(OscConfig(host=osc.host, port=osc.port, known_prompts=names), service.queue,
                         on_status=service.notice)
    control.start()
    return control


def _start_tray(service: ServiceView, names: tuple[str, ...]) -> Any | None:
    from vcam.qt_host import QtHost

    if not QtHost.available():
        service.notice(f"no tray: {QtHost.problem()}; the other controls (OBS, OSC, and hotkeys if they started) "
                       "still work")
        return None
    from vcam.controls.tray import TrayControl, TrayState

    tray = TrayControl(
        service.ensure_qt_host(),
        list(names),
        service.queue,
        state=lambda: TrayState(service.prompt_label, service.paused, service.filter_enabled),
        on_open_preview=service.open_preview,
        on_status=service.notice,
    )
    return _TrayHandle(tray)


def start_controls(service: ServiceView, preset: Preset | None, options: Any) -> list[Any]:
    """Start what the options and the settings ask for; returns the running controls (each has stop())."""
    if preset is None:
        return []
    names = tuple(p.name for p in service.settings.prompts)
    started: list[Any] = []
    wanted = [
        (options.hotkeys, lambda: _start_hotkeys(service, preset)),
        (service.settings.obs.enabled, lambda: _start_obs(service, names)),
        (service.settings.osc.enabled, lambda: _start_osc(service, names)),
        (options.tray, lambda: _start_tray(service, names)),
    ]
    for enabled, start in wanted:
        if not enabled:
            continue
        try:
            control = start()
        except Exception as error:  # noqa: BLE001 - a control that cannot start never stops the camera
            service.notice(f"control not started: {error}")
            log_traceback(error, "control not started")  # the terminal has one line; the log keeps the cause
            continue
        if control is not None:
            started.append(control)
    return started
