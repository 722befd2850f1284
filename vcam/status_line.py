"""The one-line status of a run (terminal, log, `--overlay`): the rate of what the output shows now, and the state.

Its own module because what it says must be true at every moment of a run, switches included: while the model
loads, the output shows the loading card, so the rate is the card's (paused, the camera's); from the first
stylised frame on it is the model's alone, so the card's 25 fps never reads as the model's (the frames of the two
are counted apart by the pipeline, `core.stats.PipelineStats.result_fps`).
"""
from __future__ import annotations

from typing import Literal

from core.stats import PipelineStats

RunState = Literal["loading", "live", "paused"]


def status_line(stats: PipelineStats, skip_rate: float, prompt: str, state: RunState) -> str:
    """"12.3 fps | skip  20% | prompt | live"; "-- fps" while the model has not yet given two calls' frames (one
    frame is no rate: 0.0 would say the stream stopped)."""
    rate = stats.fps if state in ("loading", "paused") else stats.result_fps  # paused: the camera passes through
    shown = "   -- fps" if rate is None else f"{rate:5.1f} fps"
    return f"{shown} | skip {skip_rate:4.0%} | {prompt} | {state}"
