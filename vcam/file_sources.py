"""Video and image files as sources: a clip or a still standing in for a camera, or read as fast as consumed
(benchmarks, offline rendering)."""
from __future__ import annotations

import math
import threading
from pathlib import Path

import cv2
import numpy as np

from core.frame_io import FrameSource
from core.pacing import FramePacer
from vcam.camera_source import open_video_capture
from vcam.reconnecting_source import ReconnectingSource
from vcam.source_base import DEFAULT_CAMERA_FPS, SourceConfig, SourceError, to_rgb

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"})
FILE_LOST_NOTICE = ("video file missing - retrying...",)


class VideoFileSource:
    """Frames of a video file; looped by default so a clip can stand in for a camera.

    When live it is paced at the file's own frame rate like a camera (`fallback_fps` only if the file does not
    say); otherwise it is read as fast as consumed (benchmarks, offline rendering). A file that can no longer be
    read when it loops (deleted or moved mid-run) is a SourceError saying so; a live looping file is wrapped in a
    `ReconnectingSource` by `open_source`, so there it is a lost camera instead.
    """

    def __init__(self, path: Path, loop: bool, live: bool, fallback_fps: float | None = None,
                 stop: threading.Event | None = None) -> None:
        """`stop`: an owner's event that ends a paced wait and every later read (a `ReconnectingSource` closing);
        without one, `close()` sets an event of this file's own."""
        self.path = path
        self.loop = loop
        self.live = live
        self._capture: cv2.VideoCapture | None = self._open()
        file_fps = self._capture.get(cv2.CAP_PROP_FPS)
        usable = bool(file_fps) and math.isfinite(file_fps) and 0 < file_fps <= 1000
        self.fps = file_fps if usable else (fallback_fps or DEFAULT_CAMERA_FPS)
        self._owns_stop = stop is None
        self._stop = stop or threading.Event()
        self._reading = threading.Lock()  # close() must not release the capture while a read is inside it
        self._pacer = FramePacer(self.fps, interrupt=self._stop) if live else None
        self.frames_read = 0

    def _open(self) -> cv2.VideoCapture:
        try:
            return open_video_capture(str(self.path))
        except SourceError:
            raise SourceError(f"cannot read video file {self.path} (unsupported format?); "
                              "try converting it to .mp4 with ffmpeg") from None

    def _reopen(self) -> cv2.VideoCapture:
        try:
            return open_video_capture(str(self.path))
        except SourceError:
            raise SourceError(f"video file {self.path} can no longer be read (deleted or moved while running?)"
                              ) from None

    def read(self) -> np.ndarray | None:
        ok, frame = self.grab()
        return to_rgb(frame) if ok and frame is not None else None

    def grab(self) -> tuple[bool, np.ndarray | None]:
        """The next frame as OpenCV gives it (BGR), in the `Capture` contract; (False, None) at the end."""
        with self._reading:
            if self._capture is None or self._stop.is_set():
                return False, None
            ok, frame = self._capture.read()
            if not ok and self.loop and self.frames_read > 0:
                # Reopening is the reliable way back to frame 0: seeking is inexact in several containers.
                self._capture.release()
                self._capture = None
                self._capture = self._reopen()
                ok, frame = self._capture.read()
            if not ok or frame is None:
                return False, None
            if self._pacer is not None:
                self._pacer.tick()
            self.frames_read += 1
            return True, frame

    def close(self) -> None:
        if self._owns_stop:
            self._stop.set()  # ends a paced wait at once; a decode in progress takes milliseconds
        with self._reading:
            if self._capture is not None:
                self._capture.release()
                self._capture = None


class _VideoFileCapture:
    """A `VideoFileSource` through the `Capture` contract, so a `ReconnectingSource` can watch over it: a file
    that can no longer be read is a failed read, like a camera unplugged."""

    def __init__(self, file: VideoFileSource) -> None:
        self.file = file

    def read(self) -> tuple[bool, np.ndarray | None]:
        try:
            return self.file.grab()
        except SourceError:
            return False, None

    def release(self) -> None:
        self.file.close()


def _open_live_video(path: Path, config: SourceConfig) -> FrameSource:
    """A looping clip standing in for a camera: deleted, moved or unreadable mid-run, it shows its last picture
    with a notice and is reopened with back-off until it can be read again (errors of the first open as usual)."""
    stop = threading.Event()  # closing the source ends a paced wait inside the file at once

    def open_file() -> VideoFileSource:
        return VideoFileSource(path, loop=True, live=True, fallback_fps=config.fps, stop=stop)

    first = open_file()
    opened = iter([first])
    return ReconnectingSource(lambda: _VideoFileCapture(next(opened, None) or open_file()), fps=first.fps,
                              notice=FILE_LOST_NOTICE, name=f"video file {path}", stop=stop)


class ImageSource:
    """A still image repeated: a copy each read, so a consumer that draws on a frame cannot change the next."""

    def __init__(self, path: Path, loop: bool, live: bool, fps: float | None) -> None:
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise SourceError(f"cannot read image file {path} (unsupported or corrupt); try a .png or .jpg")
        self._image = to_rgb(bgr)
        self.loop = loop
        self.live = live
        self._done = threading.Event()
        self._pacer = FramePacer(fps or DEFAULT_CAMERA_FPS, interrupt=self._done) if live else None

    def read(self) -> np.ndarray | None:
        if self._done.is_set():
            return None
        if self._pacer is not None:
            self._pacer.tick()
        if not self.loop:
            self._done.set()
        return self._image.copy()

    def close(self) -> None:
        self._done.set()


def open_file(path: Path, config: SourceConfig) -> FrameSource:
    live = bool(config.live)
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return ImageSource(path, loop=config.loop, live=live, fps=config.fps)
    if live and config.loop:
        return _open_live_video(path, config)
    return VideoFileSource(path, loop=config.loop, live=live, fallback_fps=config.fps)
