"""Sources whose frame is a pure function of its index: the synthetic pattern here, the sample photo in
`vcam.sample_source`. Deterministic, so benchmarks and tests are repeatable on every machine."""
from __future__ import annotations

import math
import threading

import cv2
import numpy as np

from core.frame_io import FrameSource
from core.pacing import FramePacer
from vcam.source_base import DEFAULT_CAMERA_FPS, SourceConfig, SourceError


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
        if self._pacer is not None:
            self._pacer.sent()  # the clock counts from when the frame is handed out, after it was drawn
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


def open_synthetic(arg: str, config: SourceConfig) -> FrameSource:
    if arg not in ("", "static"):
        raise SourceError(f"unknown synthetic pattern {arg!r}; use 'synthetic' or 'synthetic:static'")
    live = config.live if config.live is not None else config.fps is not None
    return SyntheticSource(*config.pattern_size, moving=arg != "static", live=live, fps=config.fps)
