"""What every frame source shares: the error, the configuration, the default camera rate and the BGR -> RGB step."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

DEFAULT_CAMERA_FPS = 30.0


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


def to_rgb(bgr: np.ndarray) -> np.ndarray:
    """An OpenCV frame (BGR, BGRA or grey) as (H, W, 3) uint8 RGB."""
    if bgr.ndim == 2:
        return cv2.cvtColor(bgr, cv2.COLOR_GRAY2RGB)
    if bgr.shape[2] == 4:
        return cv2.cvtColor(bgr, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
