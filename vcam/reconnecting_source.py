"""`ReconnectingSource`: a live source that survives its capture going away (a camera unplugged or taken by another
app, a live video file deleted or moved): the viewers of the virtual camera must not see it freeze or vanish, so
it keeps sending the last good picture with a notice on it and reopens the capture in the background until it is
back.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Callable, Protocol

import cv2
import numpy as np

from core.pacing import FramePacer
from vcam.overlay import with_notices
from vcam.source_base import SourceError, to_rgb

CAMERA_LOST_NOTICE = ("camera lost - reconnecting...",)
# What an opener raises while its device is away (our one-line error, OpenCV's, the OS's): retried with back-off.
# Anything else is a programming error: the retry thread stops and the next read raises it.
DEVICE_AWAY = (SourceError, cv2.error, OSError)

log = logging.getLogger("vcam")


class Capture(Protocol):
    """What `ReconnectingSource` needs of a capture: OpenCV's `VideoCapture` read/release contract (BGR frames)."""

    def read(self) -> tuple[bool, np.ndarray | None]: ...

    def release(self) -> None: ...


CaptureOpener = Callable[[], Capture]


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
    frame of a successful reopen resumes the stream by itself. An opener failing with anything but DEVICE_AWAY is
    a bug, not a missing device: reconnecting stops (logged) and the next `read()` raises it, ending the run in
    one line instead of retrying for ever.
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
        self._recovered: tuple[Capture, np.ndarray] | None = None  # handed over by the retry thread
        self._lock = threading.Lock()  # guards `_recovered`, shared with the retry thread
        self._reading = threading.Lock()  # held for the whole of a read
        self._retry_thread: threading.Thread | None = None
        self._failure: Exception | None = None  # a programming error that ended the retry thread
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
            if self._failure is not None:
                raise self._failure
            if recovered is not None:
                self._capture, first_frame = recovered
                log.warning("%s is back: streaming again", self.name)
                return self._accept(first_frame)
            self._pacer.tick()
            return self._notice()
        ok, frame = self._capture.read()
        if ok and frame is not None:
            return self._accept(frame)
        self._start_reconnecting()
        self._pacer.reset()
        self._pacer.tick()  # starts the notice clock now: the next notice comes one period later
        return self._notice()

    def _accept(self, bgr: np.ndarray) -> np.ndarray:
        self._last_good = to_rgb(bgr)
        return self._last_good

    def _notice(self) -> np.ndarray:
        """The last good picture (black if there never was one), unchanged, carrying the notice lines: the output
        draws them once it has fitted the picture to its size (`vcam.overlay.with_notices`), so a 4:3 camera
        cropped to 16:9 still shows them, and the model stylises the picture, not the text."""
        width, height = self._blank_size
        base = self._last_good if self._last_good is not None else np.zeros((height, width, 3), dtype=np.uint8)
        return with_notices(base, self._notice_lines)

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
            except DEVICE_AWAY as error:  # the device is still away: try again later
                log.debug("%s: reopen attempt %d failed: %s", self.name, self.reconnect_attempts, error)
                capture = None
            except Exception as error:  # a bug, not a missing device: retrying would hide it for ever
                log.error("%s: reconnecting stopped by an unexpected %s: %s", self.name, type(error).__name__, error)
                self._failure = error
                return
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
