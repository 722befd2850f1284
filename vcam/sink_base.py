"""What every frame sink shares: the error, the configuration, and fitting a frame to the configured size."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from vcam.framing import FitMode, fit_frame
from vcam.overlay import draw_status, notices_of
from vcam.sections import OutputSection


class SinkError(Exception):
    """A sink that cannot be opened; the one-line message says how to make it work."""


@dataclass(frozen=True)
class SinkConfig:
    """How output frames are shaped and paced.

    `backend` picks a pyvirtualcam backend by name (v4l2loopback, obs, unitycapture); None tries each.
    """

    width: int = OutputSection.width  # the defaults are the schema's ([output]), written once there
    height: int = OutputSection.height
    fps: float = OutputSection.fps
    fit: FitMode = OutputSection.fit
    mirror: bool = OutputSection.mirror
    backend: str | None = None  # OutputSection's "" (try each backend in order)
    jpeg_quality: int = 80


def fit_to_config(frame: np.ndarray, config: SinkConfig) -> np.ndarray:
    """`frame` (any size) fitted to the configured (height, width, 3), mirrored if asked, and then the notices it
    carries drawn (`vcam.overlay.with_notices`): after fitting, so they show for every aspect ratio and fit mode,
    and after mirroring, so they read left to right."""
    fitted = np.asarray(fit_frame(frame, config.width, config.height, config.fit, config.mirror))
    lines = notices_of(frame)
    return draw_status(fitted, lines) if lines else fitted


class PreparedOnce:
    """What a sink makes of a frame (fitted, converted), made once per frame: while the model is slower than the
    output, the pipeline writes the same frame object again at every tick of the output's clock, and fitting and
    converting it again (a 1280x720 resize and colour conversion: milliseconds, 30 times a second) would take CPU
    from the model for a picture the sink already has."""

    def __init__(self, prepare: Callable[[np.ndarray], np.ndarray]) -> None:
        self._prepare = prepare
        self._frame: np.ndarray | None = None
        self._prepared: np.ndarray | None = None

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        if frame is not self._frame or self._prepared is None:
            self._frame, self._prepared = frame, self._prepare(frame)
        return self._prepared
