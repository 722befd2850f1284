"""`camera:N` / `camera:/dev/videoN`: a real camera through OpenCV, on the platform's native capture backend, kept alive
across unplugging by `ReconnectingSource`."""
from __future__ import annotations

import platform

import cv2

from core.frame_io import FrameSource
from vcam.reconnecting_source import Capture, CaptureOpener, ReconnectingSource
from vcam.source_base import DEFAULT_CAMERA_FPS, SourceConfig, SourceError


def open_video_capture(target: str | int, api: int = cv2.CAP_ANY) -> cv2.VideoCapture:
    """Open a capture or raise SourceError; used as an opener for files and cameras alike."""
    capture = cv2.VideoCapture(target, api)
    if not capture.isOpened():
        capture.release()
        raise SourceError(f"cannot open {target!r}")
    return capture


def _camera_apis() -> list[int]:
    """The platform's native capture backends, best first (DirectShow opens much faster than MSMF on Windows)."""
    system = platform.system()
    if system == "Linux":
        return [cv2.CAP_V4L2]
    if system == "Windows":
        return [cv2.CAP_DSHOW, cv2.CAP_MSMF]
    if system == "Darwin":
        return [cv2.CAP_AVFOUNDATION]
    return [cv2.CAP_ANY]


def ask_camera_mode(capture: cv2.VideoCapture, config: SourceConfig, api: int) -> dict[int, float]:
    """Ask an opened camera for the size and rate the user chose and return what was asked (OpenCV property ->
    value). A width, height or fps of 0 / None asks nothing, so the camera keeps its own mode: forcing a mode it
    lacks makes some drivers pick a slow one (or fail), and the user who set nothing wants the device's default."""
    asked = {prop: float(value) for prop, value in ((cv2.CAP_PROP_FRAME_WIDTH, config.width),
                                                    (cv2.CAP_PROP_FRAME_HEIGHT, config.height),
                                                    (cv2.CAP_PROP_FPS, config.fps or 0)) if value}
    if asked and api == getattr(cv2, "CAP_V4L2", None):
        # Most USB cameras reach 720p30 only in MJPG; uncompressed YUYV tops out near 10 fps. Asked before the
        # size, which the driver then looks up among the MJPG modes.
        capture.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*"MJPG"))
    for prop, value in asked.items():
        capture.set(prop, value)
    capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # we want the newest frame, not a queue of old ones
    return asked


def _camera_opener(device: str | int, config: SourceConfig) -> CaptureOpener:
    def open_camera() -> Capture:
        for api in _camera_apis():
            capture = cv2.VideoCapture(device, api)
            if not capture.isOpened():
                capture.release()
                continue
            ask_camera_mode(capture, config, api)
            return capture
        raise SourceError(
            f"camera {device!r} could not be opened: try another index (camera:1), close any app using it, "
            "or check camera permissions (Linux: be in the 'video' group; macOS/Windows: privacy settings)")

    return open_camera


def _parse_camera_device(arg: str) -> str | int:
    arg = arg.strip() or "0"
    return int(arg) if arg.isdigit() else arg


def open_camera(arg: str, config: SourceConfig) -> FrameSource:
    device = _parse_camera_device(arg)
    opener = _camera_opener(device, config)
    source = ReconnectingSource(opener, fps=config.fps or DEFAULT_CAMERA_FPS,
                                blank_size=config.pattern_size)
    if source.read() is None or source.lost:  # opened but gives nothing: busy or not a capture device
        source.close()
        raise SourceError(
            f"camera {device!r} opened but delivered no frames: close any app using it or try another index")
    return source
