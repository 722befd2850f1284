"""What every frame source shares: the error, the configuration, the default camera rate and the BGR -> RGB step."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

DEFAULT_CAMERA_FPS = 30.0
DEFAULT_PATTERN_SIZE = (1280, 720)  # generated sources, and a lost camera's notice before its first frame


class SourceError(Exception):
    """A source that cannot be opened; the one-line message says what to try instead."""


@dataclass(frozen=True)
class SourceConfig:
    """What the user asked of the source.

    `width`/`height`/`fps` are requests to a camera (it may pick the nearest mode it has); 0 / None ask nothing,
    so the camera keeps its own mode (its default size and rate). Generated sources (synthetic, sample) are made at
    `pattern_size`; files keep their own size. `fps` None also means a file's own rate, and a generated source
    made as fast as consumed. `live` None means the kind's natural behaviour: cameras are live, files and patterns
    are not (unless `fps` is given for a pattern).
    """

    width: int = 0
    height: int = 0
    fps: float | None = None
    loop: bool = True
    live: bool | None = None

    @property
    def pattern_size(self) -> tuple[int, int]:
        """(width, height) of a generated picture: the size asked, else 1280x720 (a common camera mode)."""
        return self.width or DEFAULT_PATTERN_SIZE[0], self.height or DEFAULT_PATTERN_SIZE[1]


def to_rgb(bgr: np.ndarray) -> np.ndarray:
    """An OpenCV frame (BGR, BGRA or grey) as (H, W, 3) uint8 RGB."""
    if bgr.ndim == 2:
        return cv2.cvtColor(bgr, cv2.COLOR_GRAY2RGB)
    if bgr.shape[2] == 4:
        return cv2.cvtColor(bgr, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
