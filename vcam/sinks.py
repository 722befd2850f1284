"""Where frames go: the virtual camera, a preview window, a video file, an MJPEG stream, or nowhere.

Specs: `vcam` (or `vcam:/dev/video5`, `vcam:OBS Virtual Camera` to pick a device), `window`, `mjpeg` (port
8090) or `mjpeg:PORT`, `null`, or a video file path (`.mp4`, `.avi`, `.mkv`). Every sink takes frames of any
size and fits them to its configured size with `fit_frame`, so the model's resolution never leaks into what
viewers see. Live sinks have `fps` set (the pipeline writes them on that clock); file and null sinks have
`fps` None and get every frame once, in order.
"""
from __future__ import annotations

import platform
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Protocol, Sequence

import cv2
import numpy as np

from vcam.framing import FitMode, check_fit_mode, fit_frame
from vcam.mjpeg import MjpegServer, MjpegServerError
from vcam.overlay import draw_status

PixelFormatName = Literal["RGB", "BGR", "I420"]
DEFAULT_MJPEG_PORT = 8090
VIDEO_FOURCC = {".mp4": "mp4v", ".avi": "MJPG", ".mkv": "MJPG"}  # codecs every OpenCV build can write
SPEC_FORMS = "vcam, vcam:DEVICE, window, mjpeg, mjpeg:PORT, null, or an output file (.mp4, .avi, .mkv)"


class SinkError(Exception):
    """A sink that cannot be opened; the one-line message says how to make it work."""


@dataclass(frozen=True)
class SinkConfig:
    """How output frames are shaped and paced.

    `backend` picks a pyvirtualcam backend by name (v4l2loopback, obs, unitycapture); None tries each.
    `pixel_format` is what we hand pyvirtualcam; it converts to the device's native format itself.
    """

    width: int = 1280
    height: int = 720
    fps: float = 30.0
    fit: FitMode = "crop"
    mirror: bool = False
    backend: str | None = None
    pixel_format: PixelFormatName = "RGB"
    jpeg_quality: int = 80


class FrameSink(Protocol):
    fps: float | None

    def write(self, frame: np.ndarray) -> None: ...

    def close(self) -> None: ...


class QtHostLike(Protocol):
    """The part of `vcam.qt_host.QtHost` the window needs: run a function on the GUI thread."""

    def call_soon(self, fn: Callable[[], Any]) -> None: ...


def _fit(frame: np.ndarray, config: SinkConfig) -> np.ndarray:
    return fit_frame(frame, config.width, config.height, config.fit, config.mirror)


def virtual_camera_fix() -> str:
    """How to get a virtual camera device on this platform (the part of the error a user acts on)."""
    if platform.system() == "Linux":
        return ("create one with `sudo modprobe v4l2loopback devices=1 exclusive_caps=1 card_label=vcam` "
                "(or run installer/linux/setup-v4l2loopback.sh), or use --sink mjpeg / window / a file")
    return "install OBS Studio and start its Virtual Camera once, or use --sink mjpeg / window / a file"


class VirtualCameraSink:
    """The virtual camera, through pyvirtualcam (v4l2loopback on Linux, OBS or Unity Capture elsewhere).

    `write` never sends faster than `fps`: it sleeps with pyvirtualcam's adaptive pacing only when called
    early, so it adds no delay when the pipeline already writes on the fps clock.
    """

    def __init__(self, config: SinkConfig, device: str | None = None) -> None:
        import pyvirtualcam

        if config.pixel_format == "I420" and (config.width % 2 or config.height % 2):
            raise SinkError(f"I420 needs an even width and height, got {config.width}x{config.height}")
        names = list(pyvirtualcam.camera.BACKENDS)
        if config.backend is not None and config.backend not in names:
            raise SinkError(f"unknown virtual camera backend {config.backend!r}; "
                            f"this platform has: {', '.join(names) or 'none'}")
        self.fps = config.fps
        self._config = config
        self._convert = _PIXEL_CONVERSIONS[config.pixel_format]
        try:
            self._camera = pyvirtualcam.Camera(config.width, config.height, config.fps,
                                               fmt=getattr(pyvirtualcam.PixelFormat, config.pixel_format),
                                               device=device, backend=config.backend)
        except (RuntimeError, ValueError) as error:
            # pyvirtualcam joins one line per backend tried; we keep them, on one line, before the fix.
            tried = "; ".join(line for line in str(error).splitlines() if line) or "no backend for this platform"
            raise SinkError(f"no virtual camera ({tried}); {virtual_camera_fix()}") from None
        self.backend: str = self._camera.backend
        self.device: str = self._camera.device
        self._sent_any = False

    def write(self, frame: np.ndarray) -> None:
        converted = self._convert(_fit(frame, self._config))
        if self._sent_any:
            self._camera.sleep_until_next_frame()
        self._camera.send(converted)
        self._sent_any = True

    def close(self) -> None:
        self._camera.close()


_PIXEL_CONVERSIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "RGB": lambda rgb: rgb,
    "BGR": lambda rgb: cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
    "I420": lambda rgb: cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420),  # (H * 3/2, W) planar Y, U, V
}


class VideoFileSink:
    """A video file written with OpenCV; every frame once, in order, stamped at the configured fps.

    `close()` finalises the file (an .mp4 is unplayable until its index is written) and may come from another
    thread while a frame is being written (a stop closes the sink under the output thread): a lock makes it wait
    for that frame, and a frame arriving after the close is dropped, never written into a released writer.
    """

    fps = None

    def __init__(self, path: Path, config: SinkConfig) -> None:
        fourcc = VIDEO_FOURCC.get(path.suffix.lower())
        if fourcc is None:
            raise SinkError(f"cannot write {path.suffix!r} files; use .mp4, .avi or .mkv")
        if not path.parent.is_dir():
            raise SinkError(f"output folder {path.parent} does not exist; create it or pick another path")
        self.path = path
        self._config = config
        self._writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), config.fps,
                                       (config.width, config.height))
        if not self._writer.isOpened():
            raise SinkError(f"cannot write video file {path} (is the folder writable?); try another path or .avi")
        self.frames_written = 0
        self._lock = threading.Lock()
        self._closed = False

    def write(self, frame: np.ndarray) -> None:
        converted = cv2.cvtColor(_fit(frame, self._config), cv2.COLOR_RGB2BGR)
        with self._lock:
            if self._closed:
                return
            self._writer.write(converted)
            self.frames_written += 1

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._writer.release()


class MjpegSink:
    """The MJPEG-over-HTTP stream (see `vcam.mjpeg`); `url` is what to give OBS's Media Source or a browser."""

    def __init__(self, port: int, config: SinkConfig) -> None:
        self.fps = config.fps
        self._config = config
        try:
            self._server = MjpegServer(port, config.fps, quality=config.jpeg_quality)
        except MjpegServerError as error:
            raise SinkError(str(error)) from None
        self.port = self._server.port
        self.url = self._server.url

    def write(self, frame: np.ndarray) -> None:
        fitted = _fit(frame, self._config)
        # JPEG encoding happens later on a client thread: it must not see a buffer the pipeline reuses.
        self._server.publish(fitted.copy() if np.may_share_memory(fitted, frame) else fitted)

    def close(self) -> None:
        self._server.close()


class NullSink:
    """Discards frames (benchmarks): counts them so a run can still be checked."""

    fps = None

    def __init__(self) -> None:
        self.frames_written = 0

    def write(self, frame: np.ndarray) -> None:
        self.frames_written += 1

    def close(self) -> None:
        pass


class WindowSink:
    """A preview window: a QLabel on the Qt GUI thread (owned by `QtHost`), updated with the newest frame.

    `write` runs on the pipeline's thread and only leaves the newest frame in a slot; at most one repaint is
    queued on the GUI thread at a time, so a busy GUI drops frames instead of queueing them without bound.
    `set_status(lines)` adds a small overlay (fps, skip rate, prompt) to the frames that follow.
    """

    def __init__(self, config: SinkConfig, host: QtHostLike, title: str = "vcam preview") -> None:
        self.fps = config.fps
        self._config = config
        self._host = host
        self._title = title
        self._lock = threading.Lock()
        self._pending: np.ndarray | None = None
        self._repaint_queued = False
        self._status: tuple[str, ...] = ()
        self._label: Any = None  # a QLabel, touched only on the GUI thread
        self.frames_shown = 0
        host.call_soon(self._open_window)

    def set_status(self, lines: Sequence[str]) -> None:
        self._status = tuple(lines)

    def write(self, frame: np.ndarray) -> None:
        fitted = _fit(frame, self._config)
        fitted = draw_status(fitted, self._status) if self._status else np.array(fitted)  # own copy for Qt
        with self._lock:
            self._pending = fitted
            queue_repaint = not self._repaint_queued
            self._repaint_queued = True
        if queue_repaint:
            self._host.call_soon(self._show_pending)

    def _open_window(self) -> None:
        from PySide6.QtCore import Qt
        from PySide6.QtWidgets import QLabel

        label = QLabel()
        label.setWindowTitle(self._title)
        label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        label.setStyleSheet("background: black")
        label.resize(self._config.width, self._config.height)
        label.show()
        self._label = label

    def _show_pending(self) -> None:
        from PySide6.QtGui import QImage, QPixmap

        with self._lock:
            frame, self._pending = self._pending, None
            self._repaint_queued = False
        if frame is None or self._label is None:
            return
        height, width = frame.shape[:2]
        image = QImage(frame.data, width, height, 3 * width, QImage.Format.Format_RGB888).copy()
        self._label.setPixmap(QPixmap.fromImage(image))
        self.frames_shown += 1

    def shown_image(self) -> np.ndarray | None:
        """The frame the window shows now, read back from Qt (GUI thread only; for checks and tests)."""
        if self._label is None or self._label.pixmap() is None or self._label.pixmap().isNull():
            return None
        from PySide6.QtGui import QImage

        image = self._label.pixmap().toImage().convertToFormat(QImage.Format.Format_RGB888)
        width, height = image.width(), image.height()
        data = np.frombuffer(image.constBits(), dtype=np.uint8, count=image.bytesPerLine() * height)
        return data.reshape(height, image.bytesPerLine())[:, : width * 3].reshape(height, width, 3).copy()

    def close(self) -> None:
        self._host.call_soon(self._close_window)

    def _close_window(self) -> None:
        if self._label is not None:
            self._label.close()
            self._label.deleteLater()
            self._label = None


def _parse_port(arg: str) -> int:
    if not arg:
        return DEFAULT_MJPEG_PORT
    if not arg.isdigit() or int(arg) > 65535:
        raise SinkError(f"mjpeg port must be a number from 0 to 65535, got {arg!r} (e.g. mjpeg:8090)")
    return int(arg)


def open_sink(spec: str, config: SinkConfig = SinkConfig(), host: QtHostLike | None = None) -> FrameSink:
    """Open the sink named by `spec` (see the module docstring); `host` is the Qt host, needed by `window`."""
    spec = spec.strip()
    try:
        check_fit_mode(config.fit)
    except ValueError as error:
        raise SinkError(str(error)) from None
    if config.width <= 0 or config.height <= 0 or config.fps <= 0:
        raise SinkError(f"output size and fps must be positive, got {config.width}x{config.height} at {config.fps}")
    kind, _, arg = spec.partition(":")
    if kind == "vcam":
        return VirtualCameraSink(config, device=arg or None)
    if kind == "window" and not arg:
        if host is None:
            raise SinkError("the preview window needs the Qt host; run it through `vcam run --sink window`")
        return WindowSink(config, host)
    if kind == "mjpeg":
        return MjpegSink(_parse_port(arg), config)
    if kind == "null" and not arg:
        return NullSink()
    path = Path(spec).expanduser()
    if path.suffix:  # looks like a file name: the file sink explains which formats it writes
        return VideoFileSink(path, config)
    raise SinkError(f"unknown sink {spec!r}; use {SPEC_FORMS}")


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
