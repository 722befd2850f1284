"""What a run falls back to when the machine lacks what its preset names: the offline tiny model for a missing
model, and whether the output is offline (a file or null: nobody watches in real time)."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from engines.loading import ModelSpec
from vcam.presets import load_preset
from vcam.settings import RunSettings


def fallback_preset_name(settings: RunSettings) -> str:
    """The offline preset a run falls back to when its model is missing: the same kind of solver."""
    return "tiny" if settings.stream.scheduler == "lcm" else "tiny-dpm"


def with_tiny_model(settings: RunSettings) -> RunSettings:
    """The fallback when the preset's model is not on this machine: the tiny model with the tiny preset's stream
    settings (its resolution and steps suit it), keeping the camera, the output, the prompts and the controls.
    A ddim / dpmsolver++ preset falls back to `tiny-dpm`, so the fallback runs the same kind of solver."""
    tiny = load_preset(fallback_preset_name(settings))
    # The negative prompt is the fallback preset's: a preset's negative prompt is written for its own model, and
    # the tiny model's unconditional prompt is the empty one (another one blows its CFG output out).
    stream = replace(tiny.stream_config(prompt=settings.stream.prompt), mode=settings.stream.mode)

    return replace(settings, model=ModelSpec(model="tiny", vae="tiny"), engine=tiny.model.engine, stream=stream)


def is_offline_sink(spec: str) -> bool:
    """A file or the null sink: nobody watches in real time, so sources are read as fast as they are consumed."""
    return spec == "null" or Path(spec).suffix.lower() in (".mp4", ".avi", ".mkv", ".mov", ".webm")
