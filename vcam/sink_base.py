"""What every frame sink shares: the error, the configuration, and fitting a frame to the configured size."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from vcam.framing import FitMode, fit_frame
from vcam.overlay import draw_status, notices_of

PixelFormatName = Literal["RGB", "BGR", "I420"]


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


def fit_to_config(frame: np.ndarray, config: SinkConfig) -> np.ndarray:
    """`frame` (any size) fitted to the configured (height, width, 3), mirrored if asked, and then the notices it
    carries drawn (`vcam.overlay.with_notices`): after fitting, so they show for every aspect ratio and fit mode,
    and after mirroring, so they read left to right."""
    fitted = np.asarray(fit_frame(frame, config.width, config.height, config.fit, config.mirror))
    lines = notices_of(frame)
    return draw_status(fitted, lines) if lines else fitted
