"""Offline sinks: a video file written with OpenCV, and the null sink. Neither is paced (`fps` None): each gets
every produced frame once, in order."""
from __future__ import annotations

import threading
from pathlib import Path

import cv2
import numpy as np

from vcam.sink_base import SinkConfig, SinkError, fit_to_config

VIDEO_FOURCC = {".mp4": "mp4v", ".avi": "MJPG", ".mkv": "MJPG"}  # codecs every OpenCV build can write


def check_video_path(path: Path) -> str:
    """The fourcc a video file at `path` is written with; SinkError if its format or folder cannot be written."""
    fourcc = VIDEO_FOURCC.get(path.suffix.lower())
    if fourcc is None:
        raise SinkError(f"cannot write {path.suffix!r} files; use .mp4, .avi or .mkv")
    if not path.parent.is_dir():
        raise SinkError(f"output folder {path.parent} does not exist; create it or pick another path")
    return fourcc


class VideoFileSink:
    """A video file written with OpenCV; every frame once, in order, stamped at the configured fps.

    `close()` finalises the file (an .mp4 is unplayable until its index is written) and may come from another
    thread while a frame is being written (a stop closes the sink under the output thread): a lock makes it wait
    for that frame, and a frame arriving after the close is dropped, never written into a released writer.
    """

    fps = None

    def __init__(self, path: Path, config: SinkConfig) -> None:
        fourcc = check_video_path(path)
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
        converted = cv2.cvtColor(fit_to_config(frame, self._config), cv2.COLOR_RGB2BGR)
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



class NullSink:
    """Discards frames (benchmarks): counts them so a run can still be checked."""

    fps = None

    def __init__(self) -> None:
        self.frames_written = 0

    def write(self, frame: np.ndarray) -> None:
        self.frames_written += 1

    def close(self) -> None:
        pass
