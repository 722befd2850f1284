"""Real small media files for tests, written with OpenCV into a temporary directory.

Frames are solid colours with a marker square, so content survives lossy codecs well enough to compare by mean
colour and by where the marker is.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import skimage.data

FOURCC_BY_SUFFIX = {".mp4": "mp4v", ".avi": "MJPG", ".mkv": "MJPG"}


def coloured_frame(colour: tuple[int, int, int], width: int = 64, height: int = 48) -> np.ndarray:
    """An RGB frame of one colour with a white square in its top-left quarter (to tell left from right)."""
    frame = np.empty((height, width, 3), dtype=np.uint8)
    frame[:] = colour
    frame[height // 8 : height // 8 + height // 4, width // 8 : width // 8 + width // 4] = 255
    return frame


def distinct_colours(count: int) -> list[tuple[int, int, int]]:
    """Colours far apart from each other, so frames can be told apart after JPEG/MPEG-4 compression."""
    palette = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200), (200, 30, 200),
               (120, 60, 10), (10, 60, 120)]
    return [palette[i % len(palette)] for i in range(count)]


def write_video(path: Path, frames: Sequence[np.ndarray], fps: float = 25.0) -> Path:
    """Write RGB frames to a video file (codec from the suffix); returns the path."""
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*FOURCC_BY_SUFFIX[path.suffix]), fps, (width, height))
    assert writer.isOpened(), f"OpenCV cannot write {path}"
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def write_image(path: Path, frame: np.ndarray) -> Path:
    assert cv2.imwrite(str(path), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)), f"OpenCV cannot write {path}"
    return path


def read_video(path: Path) -> list[np.ndarray]:
    """All frames of a video file as RGB, the way any player would decode them."""
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    capture.release()
    return frames


def mean_colour(frame: np.ndarray) -> np.ndarray:
    """Mean RGB of the bottom-right quarter (away from the marker square and from status text)."""
    height, width = frame.shape[:2]
    return frame[height // 2 :, width // 2 :].reshape(-1, 3).mean(axis=0)


def close_colour(frame: np.ndarray, colour: tuple[int, int, int], tolerance: float = 25.0) -> bool:
    return bool(np.abs(mean_colour(frame) - np.array(colour)).max() <= tolerance)


def photo_camera_clip(path: Path, width: int = 640, height: int = 480) -> tuple[Path, np.ndarray]:
    """A short video of a real photograph (skimage's cat) at a camera's size, and the picture it shows."""
    photo = cv2.resize(skimage.data.chelsea(), (width, height), interpolation=cv2.INTER_AREA)
    return write_video(path, [photo] * 3), photo


def notice_pixels(noticed: np.ndarray, clean: np.ndarray) -> int:
    """How many pixels of the output's top-left notice area (where `draw_status` writes) are bright with the notice
    and were not bright in the same output without it: the notice's text, not the picture's own highlights."""
    height, width = noticed.shape[:2]
    corner = (slice(0, height // 20), slice(0, width // 5))
    bright_with, bright_without = (image[corner].min(axis=2) > 160 for image in (noticed, clean))
    return int((bright_with & ~bright_without).sum())
