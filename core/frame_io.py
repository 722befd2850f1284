"""The one contract of frame sources, processors and frame sinks, shared by the pipeline and every source, processor
and sink in `vcam`."""
from __future__ import annotations

from typing import Protocol

import numpy as np


class FrameSource(Protocol):
    """Where frames come from. `live`: frames arrive in real time (camera), keep only the newest; not live
    (file, generator): the next frame is read only after the previous one was taken (no drops, deterministic).
    `close()` must also unblock a `read()` that is waiting."""

    live: bool

    def read(self) -> np.ndarray | None:
        """(H, W, 3) uint8 RGB; None at the end of the stream."""
        ...

    def close(self) -> None: ...


class FrameSink(Protocol):
    """Where frames go. `fps`: a live sink (virtual camera, window) is written exactly at this rate, repeating
    the last frame when inference is late; None (file, null) writes each produced frame once, in order.

    A live sink that also paces writes made to it directly (the virtual camera) has a `pacer`
    (`core.pacing.FramePacer`): the pipeline then runs its output on that clock instead of a second one."""

    fps: float | None

    def write(self, frame: np.ndarray) -> None:
        """(H, W, 3) uint8 RGB, never modified after it was written: the same array object written again is the
        same picture (a paced repeat), which a sink may send again without preparing it again."""
        ...

    def close(self) -> None: ...


class FrameProcessor(Protocol):
    """The work between capture and output. Gets `frames_per_call` frames per call and returns as many, or fewer
    while it fills (a stream batch holds T-1 calls' worth, see `vcam.processor.DiffusionProcessor`). It may
    expose `skipped: int` (frames whose inference it skipped) for the statistics; `placeholder: bool`, True while
    its frames are not the model's (a loading card while the model loads, a paused stream passing the camera
    through: they count neither toward `max_frames` nor toward the model's rate; read after each call); and
    `flush() -> list[frames]`, the frames still inside it, called once when the source ends."""

    frames_per_call: int

    def process(self, frames: list[np.ndarray]) -> list[np.ndarray]: ...
