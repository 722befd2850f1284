"""Where frames come from: a camera, a video or image file, or a generated pattern, chosen by a spec string.

Specs: `camera:0`, `camera:/dev/video2`, `sample[:NAME]`, `sample:static` (a real photo moved like a hand-held
webcam, see `vcam.sample_source`), `synthetic`, `synthetic:static`, or a path to a video / image file.
Every source hands out (H, W, 3) uint8 RGB frames. A `live` source behaves like a camera (real time; the
pipeline keeps only the newest frame); a non-live one is read as fast as it is consumed and nothing is dropped.

A camera that goes away mid-stream (unplugged, taken by another app) must not end the broadcast: the viewers of
the virtual camera would see it freeze or vanish. `ReconnectingSource` keeps sending the last good image with a
notice on it and reopens the camera in the background until it is back. A live video file (a clip standing in for
the camera) is treated the same way: deleted, moved or unreadable mid-run, it shows its last picture with a notice
until it can be read again.
"""
from __future__ import annotations

import logging
import math
import platform
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import cv2
import numpy as np

from vcam.overlay import draw_status

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"})
DEFAULT_CAMERA_FPS = 30.0
CAMERA_LOST_NOTICE = ("camera lost - reconnecting...",)
FILE_LOST_NOTICE = ("video file missing - retrying...",)
SPEC_FORMS = ("camera:0, camera:/dev/video2, sample, sample:NAME, sample:static, synthetic, synthetic:static, "
              "or a video/image file path")


log = logging.getLogger("vcam")


class SourceError(Exception):
    """A source that cannot be opened; the one-line message says what to try instead."""


@dataclass(frozen=True)
class SourceConfig:
    """What the user asked of the source.

    `width`/`height`/`fps` are requests to a camera (it may pick the nearest mode it has) and the size of the
    synthetic pattern; files keep their own size. `fps` None means: the camera's default rate, a file's own rate,
    and a synthetic pattern generated as fast as consumed. `live` None means the kind's natural behaviour:
    cameras are live, files and patterns are not (unless `fps` is given for a pattern).
    """

    width: int = 1280
    height: int = 720
    fps: float | None = None
    loop: bool = True
    live: bool | None = None


class FrameSource(Protocol):
    live: bool

    def read(self) -> np.ndarray | None: ...

    def close(self) -> None: ...


class Capture(Protocol):
    """What `ReconnectingSource` needs of a capture: OpenCV's `VideoCapture` read/release contract (BGR frames)."""

    def read(self) -> tuple[bool, np.ndarray | None]: ...

    def release(self) -> None: ...


CaptureOpener = Callable[[], Capture]


class FramePacer:
    """Holds a loop to a steady rate against a deadline clock, so small delays do not accumulate into drift.

    After a stall longer than one period it restarts from now instead of bursting to catch up. The wait ends
    early when `interrupt` is set, so closing a source never waits out a long frame period.
    """

    def __init__(self, fps: float, interrupt: threading.Event | None = None) -> None:
        if fps <= 0:
            raise SourceError(f"fps must be positive, got {fps}")
        self.period = 1.0 / fps
        self._interrupt = interrupt or threading.Event()
        self._next_due: float | None = None

    def wait(self) -> None:
        now = time.perf_counter()
        if self._next_due is None or now - self._next_due > self.period:
            self._next_due = now + self.period
            return
        if now < self._next_due:
            self._interrupt.wait(self._next_due - now)
        self._next_due += self.period

    def reset(self) -> None:
        self._next_due = None


def _to_rgb(bgr: np.ndarray) -> np.ndarray:
    if bgr.ndim == 2:
        return cv2.cvtColor(bgr, cv2.COLOR_GRAY2RGB)
    if bgr.shape[2] == 4:
        return cv2.cvtColor(bgr, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential back-off between reopen attempts: quick at first (a replug), then gentle on the system."""

    first_delay: float = 0.5
    max_delay: float = 5.0
    factor: float = 2.0


class ReconnectingSource:
    """A live source over any capture opener that survives the capture going away.

    While the capture delivers, frames pass through. When a read fails the capture is released, a background
    thread calls `opener` again with back-off, and `read()` keeps returning the last good frame with a
    "camera lost" notice, paced at `fps` so the virtual camera downstream keeps receiving frames. The first
    frame of a successful reopen resumes the stream by itself.
    """

    live = True

    def __init__(self, opener: CaptureOpener, fps: float, retry: RetryPolicy = RetryPolicy(),
                 blank_size: tuple[int, int] = (640, 480), notice: tuple[str, ...] = CAMERA_LOST_NOTICE,
                 name: str = "the camera", stop: threading.Event | None = None) -> None:
        """`notice`: the lines drawn on the last picture while lost; `name`: what the one-line log messages about
        the loss and the recovery call the source; `stop`: set by `close()`, may be shared with the captures so a
        paced read inside one ends at once."""
        self._opener = opener
        self._notice_lines = notice
        self.name = name
        self._retry = retry
        self._stop = stop or threading.Event()
        self._pacer = FramePacer(fps, interrupt=self._stop)
        self._blank_size = blank_size  # (width, height) of the notice frame if the camera never gave one
        self._capture: Capture | None = opener()  # errors of the first open reach the caller as they are
        self._last_good: np.ndarray | None = None
        self._notice_frame: np.ndarray | None = None
        self._recovered: tuple[Capture, np.ndarray] | None = None  # handed over by the retry thread
        self._lock = threading.Lock()  # guards `_recovered`, shared with the retry thread
        self._reading = threading.Lock()  # held for the whole of a read
        self._retry_thread: threading.Thread | None = None
        self.reconnect_attempts = 0
        self.losses = 0

    @property
    def lost(self) -> bool:
        return self._capture is None

    def read(self) -> np.ndarray | None:
        with self._reading:  # close() never releases a capture while a read is inside it
            if self._stop.is_set():
                return None
            frame = self._read_or_notice()
            if self._stop.is_set():  # closed while we waited on the device: finish the release close() left
                self._release_captures()
                return None
            return frame

    def _read_or_notice(self) -> np.ndarray:
        if self._capture is None:
            with self._lock:
                recovered, self._recovered = self._recovered, None
            if recovered is not None:
                self._capture, first_frame = recovered
                log.warning("%s is back: streaming again", self.name)
                return self._accept(first_frame)
            self._pacer.wait()
            return self._notice()
        ok, frame = self._capture.read()
        if ok and frame is not None:
            return self._accept(frame)
        self._start_reconnecting()
        self._pacer.reset()
        self._pacer.wait()  # starts the notice clock now: the next notice comes one period later
        return self._notice()

    def _accept(self, bgr: np.ndarray) -> np.ndarray:
        self._last_good = _to_rgb(bgr)
        self._notice_frame = None
        return self._last_good

    def _notice(self) -> np.ndarray:
        if self._notice_frame is None:  # drawn once per loss: the notice frame is sent many times per second
            if self._last_good is not None:
                base = self._last_good
            else:
                base = np.zeros((self._blank_size[1], self._blank_size[0], 3), dtype=np.uint8)
            self._notice_frame = draw_status(base, self._notice_lines)
        return self._notice_frame

    def _start_reconnecting(self) -> None:
        capture, self._capture = self._capture, None
        if capture is not None:
            capture.release()
        self.losses += 1
        log.warning("%s stopped delivering frames: showing the last picture and retrying with back-off", self.name)
        self._retry_thread = threading.Thread(target=self._reconnect, name="camera-reconnect", daemon=True)
        self._retry_thread.start()

    def _reconnect(self) -> None:
        delay = self._retry.first_delay
        while not self._stop.wait(delay):
            self.reconnect_attempts += 1
            try:
                capture = self._opener()
            except Exception:  # the device is still away: any failure of the opener means "try again later"
                capture = None
            if capture is not None:
                ok, frame = capture.read()
                if ok and frame is not None:
                    with self._lock:
                        if self._stop.is_set():
                            capture.release()
                        else:
                            self._recovered = (capture, frame)
                    return
                capture.release()
            delay = min(delay * self._retry.factor, self._retry.max_delay)

    def close(self) -> None:
        """Stop reconnecting and release the capture; returns promptly even if a read hangs on the device."""
        self._stop.set()
        if self._retry_thread is not None:
            self._retry_thread.join(timeout=1.0)  # a hanging open finishes later and releases what it opened
        if self._reading.acquire(timeout=1.0):
            try:
                self._release_captures()
            finally:
                self._reading.release()
        # else: the read stuck in the device releases the captures itself when it returns

    def _release_captures(self) -> None:
        with self._lock:
            recovered, self._recovered = self._recovered, None
        for capture in (self._capture, recovered[0] if recovered else None):
            if capture is not None:
                capture.release()
        self._capture = None


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


def _camera_opener(device: str | int, config: SourceConfig) -> CaptureOpener:
    fps = config.fps or DEFAULT_CAMERA_FPS

    def open_camera() -> Capture:
        for api in _camera_apis():
            capture = cv2.VideoCapture(device, api)
            if not capture.isOpened():
                capture.release()
                continue
            if api == getattr(cv2, "CAP_V4L2", None):
                # Most USB cameras reach 720p30 only in MJPG; uncompressed YUYV tops out near 10 fps.
                capture.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*"MJPG"))
            capture.set(cv2.CAP_PROP_FRAME_WIDTH, config.width)
            capture.set(cv2.CAP_PROP_FRAME_HEIGHT, config.height)
            capture.set(cv2.CAP_PROP_FPS, fps)
            capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # we want the newest frame, not a queue of old ones
            return capture
        raise SourceError(
            f"camera {device!r} could not be opened: try another index (camera:1), close any app using it, "
            "or check camera permissions (Linux: be in the 'video' group; macOS/Windows: privacy settings)")

    return open_camera


def _parse_camera_device(arg: str) -> str | int:
    arg = arg.strip() or "0"
    return int(arg) if arg.isdigit() else arg


def _open_camera(arg: str, config: SourceConfig) -> FrameSource:
    device = _parse_camera_device(arg)
    opener = _camera_opener(device, config)
    source = ReconnectingSource(opener, fps=config.fps or DEFAULT_CAMERA_FPS,
                                blank_size=(config.width, config.height))
    if source.read() is None or source.lost:  # opened but gives nothing: busy or not a capture device
        source.close()
        raise SourceError(
            f"camera {device!r} opened but delivered no frames: close any app using it or try another index")
    return source


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
        return _to_rgb(frame) if ok and frame is not None else None

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
                self._pacer.wait()
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
        self._image = _to_rgb(bgr)
        self.loop = loop
        self.live = live
        self._done = threading.Event()
        self._pacer = FramePacer(fps or DEFAULT_CAMERA_FPS, interrupt=self._done) if live else None

    def read(self) -> np.ndarray | None:
        if self._done.is_set():
            return None
        if self._pacer is not None:
            self._pacer.wait()
        if not self.loop:
            self._done.set()
        return self._image.copy()

    def close(self) -> None:
        self._done.set()


class GeneratedSource:
    """A source whose frame is a pure function of its index (`frame(index)`, given by the subclass): read in order
    from 0, paced at `fps` when live, as fast as consumed otherwise."""

    def __init__(self, live: bool, fps: float | None) -> None:
        self.live = live
        self._closed = threading.Event()
        self._pacer = FramePacer(fps or DEFAULT_CAMERA_FPS, interrupt=self._closed) if live else None
        self._index = 0

    def frame(self, index: int) -> np.ndarray:
        raise NotImplementedError

    def read(self) -> np.ndarray | None:
        if self._pacer is not None:
            self._pacer.wait()
        if self._closed.is_set():
            return None
        frame = self.frame(self._index)
        self._index += 1
        return frame

    def close(self) -> None:
        self._closed.set()


class SyntheticSource(GeneratedSource):
    """A generated pattern: colour gradients drifting sideways and a disc moving on a Lissajous path.

    Deterministic by frame index (same frames on every machine, so benchmarks and tests are repeatable) and
    cheap: the gradients are computed once and only shifted per frame.
    """

    def __init__(self, width: int, height: int, moving: bool = True, live: bool = False,
                 fps: float | None = None) -> None:
        if width <= 0 or height <= 0:
            raise SourceError(f"synthetic size must be positive, got {width}x{height}")
        super().__init__(live, fps)
        self.width, self.height = width, height
        self.moving = moving
        xs = np.arange(width, dtype=np.float32) / max(1, width - 1)
        ys = np.arange(height, dtype=np.float32) / max(1, height - 1)
        self._red = np.broadcast_to((xs * 255).astype(np.uint8)[None, :], (height, width))
        self._green = np.broadcast_to((ys * 255).astype(np.uint8)[:, None], (height, width))
        self._blue_row = (127.5 + 127.5 * np.sin(2 * np.pi * xs * 2)).astype(np.uint8)

    def frame(self, index: int) -> np.ndarray:
        t = index if self.moving else 0
        out = np.empty((self.height, self.width, 3), dtype=np.uint8)
        out[..., 0] = self._red
        out[..., 1] = self._green
        out[..., 2] = np.roll(self._blue_row, t * max(1, self.width // 120))[None, :]
        centre = (round(self.width * (0.5 + 0.3 * math.sin(t * 2 * math.pi / 90))),
                  round(self.height * (0.5 + 0.3 * math.sin(t * 2 * math.pi / 70 + 1.0))))
        radius = max(2, min(self.width, self.height) // 8)
        cv2.circle(out, centre, radius, (250, 240, 220), thickness=-1, lineType=cv2.LINE_AA)
        return out


def _open_synthetic(arg: str, config: SourceConfig) -> FrameSource:
    if arg not in ("", "static"):
        raise SourceError(f"unknown synthetic pattern {arg!r}; use 'synthetic' or 'synthetic:static'")
    live = config.live if config.live is not None else config.fps is not None
    return SyntheticSource(config.width, config.height, moving=arg != "static", live=live, fps=config.fps)


def _open_file(path: Path, config: SourceConfig) -> FrameSource:
    live = bool(config.live)
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return ImageSource(path, loop=config.loop, live=live, fps=config.fps)
    if live and config.loop:
        return _open_live_video(path, config)
    return VideoFileSource(path, loop=config.loop, live=live, fallback_fps=config.fps)


def _open_sample(arg: str, config: SourceConfig) -> FrameSource:
    from vcam.sample_source import open_sample  # imported when asked for: scikit-image is slow to import

    return open_sample(arg, config)


SOURCE_KINDS: dict[str, Callable[[str, SourceConfig], FrameSource]] = {
    "camera": _open_camera,
    "sample": _open_sample,
    "synthetic": _open_synthetic,
}


def open_source(spec: str, config: SourceConfig = SourceConfig()) -> FrameSource:
    """Open the source named by `spec` (see the module docstring for the forms)."""
    spec = spec.strip()
    if not spec:
        raise SourceError(f"empty source; use {SPEC_FORMS}")
    kind, _, arg = spec.partition(":")
    if kind in SOURCE_KINDS:
        return SOURCE_KINDS[kind](arg, config)
    path = Path(spec).expanduser()
    if path.is_file():
        return _open_file(path, config)
    if path.exists():
        raise SourceError(f"source {spec!r} is not a file; use {SPEC_FORMS}")
    if ":" in spec and len(kind) > 1:  # a one-letter kind is a Windows drive, so that spec is a missing path
        raise SourceError(f"unknown source kind {kind!r}; use {SPEC_FORMS}")
    raise SourceError(f"source file not found: {spec} (check the path, or use camera:0 or synthetic)")
