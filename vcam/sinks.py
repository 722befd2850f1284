"""Where frames go: the virtual camera, a preview window, a video file, an MJPEG stream, or nowhere.

Specs: `vcam` (or `vcam:/dev/video5`, `vcam:OBS Virtual Camera` to pick a device), `window`, `mjpeg` (port
8090) or `mjpeg:PORT`, `null`, or a video file path (`.mp4`, `.avi`, `.mkv`); `auto` tries `AUTO_SINKS` in order.
Every sink takes frames of any size and fits them to its configured size with `fit_frame`, so the model's
resolution never leaks into what viewers see. Live sinks have `fps` set (the pipeline writes them on that clock);
file and null sinks have `fps` None and get every frame once, in order (the `core.frame_io.FrameSink` contract).

The kinds are a registry (`SINK_KINDS`, by the spec's prefix; a name with a suffix is a video file), and
`open_first_sink` tries several in order, like pyvirtualcam's backends, joining their errors into one line.
"""
from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from core.frame_io import FrameSink
from vcam.backends import open_first
from vcam.file_sinks import NullSink, VideoFileSink, check_video_path
from vcam.framing import check_fit_mode
from vcam.mjpeg_sink import DEFAULT_MJPEG_PORT, MjpegSink, parse_port
from vcam.sink_base import SinkConfig, SinkError
from vcam.virtual_camera import VirtualCameraSink
from vcam.window_sink import QtHostLike, WindowSink

__all__ = ["AUTO_SINKS", "FrameSink", "SINK_KINDS", "SinkConfig", "SinkError", "SinkKind", "check_sink_spec",
           "detect_sinks", "open_first_sink", "open_sink"]

SPEC_FORMS = "vcam, vcam:DEVICE, window, mjpeg, mjpeg:PORT, null, or an output file (.mp4, .avi, .mkv)"
AUTO_SINKS = ("vcam", "window", "mjpeg")  # what `--sink auto` tries, in this order


def _open_window(arg: str, config: SinkConfig, host: QtHostLike | None) -> FrameSink:
    if arg:
        raise SinkError(f"unknown sink 'window:{arg}'; use {SPEC_FORMS}")
    if host is None:
        raise SinkError("the preview window needs the Qt host; run it through `vcam run --sink window`")
    return WindowSink(config, host)


def _open_null(arg: str, config: SinkConfig, host: QtHostLike | None) -> FrameSink:
    if arg:
        raise SinkError(f"unknown sink 'null:{arg}'; use {SPEC_FORMS}")
    return NullSink()


@dataclass(frozen=True)
class SinkKind:
    """One kind of sink: the spec's `prefix` (`mjpeg` in `mjpeg:8091`) and what opens the rest of the spec
    (`host` is the Qt host, needed by the window only)."""

    prefix: str
    open: Callable[[str, SinkConfig, QtHostLike | None], FrameSink]


SINK_KINDS: tuple[SinkKind, ...] = (
    SinkKind("vcam", lambda arg, config, host: VirtualCameraSink(config, device=arg or None)),
    SinkKind("window", _open_window),
    SinkKind("mjpeg", lambda arg, config, host: MjpegSink(parse_port(arg), config)),
    SinkKind("null", _open_null),
)


def open_sink(spec: str, config: SinkConfig = SinkConfig(), host: QtHostLike | None = None) -> FrameSink:
    """Open the sink named by `spec` (see the module docstring); `host` is the Qt host, needed by `window`."""
    spec = spec.strip()
    try:
        check_fit_mode(config.fit)
    except ValueError as error:
        raise SinkError(str(error)) from None
    if config.width <= 0 or config.height <= 0 or config.fps <= 0:
        raise SinkError(f"output size and fps must be positive, got {config.width}x{config.height} at {config.fps}")
    _check_one_sink(spec)
    kind, _, arg = spec.partition(":")
    for sink_kind in SINK_KINDS:
        if sink_kind.prefix == kind:
            return sink_kind.open(arg, config, host)
    return VideoFileSink(Path(spec).expanduser(), config)  # a file name (the check saw its suffix)


def check_sink_spec(spec: str) -> None:
    """The mistakes in a sink spec (`auto`: in each sink it tries) that need no device (an unknown kind, a malformed
    port, a video format or a folder that cannot be written), raised as opening it would. The settings check it,
    so such a mistake is one line before the camera opens and the model libraries load, not seconds later."""
    for name in AUTO_SINKS if spec.strip() == "auto" else (spec,):
        _check_one_sink(name)


def _check_one_sink(spec: str) -> None:
    """`check_sink_spec` for one sink; `open_sink` asks it first, so the two never disagree."""
    spec = spec.strip()
    kind, _, arg = spec.partition(":")
    if kind == "mjpeg":
        parse_port(arg)
    if any(sink_kind.prefix == kind for sink_kind in SINK_KINDS):
        return
    path = Path(spec).expanduser()
    if not path.suffix:
        raise SinkError(f"unknown sink {spec!r}; use {SPEC_FORMS}")
    check_video_path(path)


def open_first_sink(spec: str, config: SinkConfig,
                    window_host: Callable[[], QtHostLike | None]) -> tuple[str, FrameSink, list[str]]:
    """`spec`, or for `auto` the first of AUTO_SINKS that opens: (name, sink, 'name: error' of those tried before).

    `window_host()` gives the Qt host, or None where no window can show (no display); it is asked only when the
    window is tried. One SinkError if nothing opens: a single sink's own error, or every one tried on one line.
    """
    def opener(name: str) -> Callable[[], FrameSink]:
        def open_one() -> FrameSink:
            host = window_host() if name == "window" else None
            if name == "window" and host is None:
                if spec == "window":
                    raise SinkError("the preview window needs a display; use --sink vcam, --sink mjpeg or an "
                                    "output file")
                raise SinkError("no display")
            return open_sink(name, config, host=host)

        return open_one

    names = AUTO_SINKS if spec == "auto" else (spec,)
    return open_first([(name, opener(name)) for name in names], SinkError, "no output could open: ")


def _display_problem() -> str | None:
    """Why a window cannot show here (one line), or None if it can; the Qt host's own test."""
    try:
        from vcam.qt_host import QtHost
    except ImportError as error:
        return f"Qt is not usable ({error}); reinstall with pip install PySide6-Essentials"
    return QtHost.problem()


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def detect_sinks(config: SinkConfig = SinkConfig()) -> list[str]:
    """Which of vcam / window / mjpeg can work here: one line each, '+ name: ...' usable, '- name: why not'.

    The virtual camera is tested by really opening it (and closing it at once): nothing else tells reliably
    whether a device exists, is free and accepts the size.
    """
    lines = []
    try:
        camera = VirtualCameraSink(config)
    except SinkError as error:
        lines.append(f"- vcam: {error}")
    else:
        lines.append(f"+ vcam: {camera.backend} device {camera.device}")
        camera.close()
    problem = _display_problem()
    lines.append(f"- window: {problem}" if problem else "+ window: a display is available")
    if _port_free(DEFAULT_MJPEG_PORT):
        lines.append(f"+ mjpeg: http://127.0.0.1:{DEFAULT_MJPEG_PORT}/stream.mjpg")
    else:
        lines.append(f"- mjpeg: port {DEFAULT_MJPEG_PORT} is in use; use mjpeg:PORT with a free port")
    return lines
