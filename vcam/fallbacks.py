"""What a run falls back to when the machine lacks what its preset names: the offline tiny model for a missing
model, and whether the output is offline (a file or null: nobody watches in real time)."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from vcam.settings import RunSettings
from vcam.settings import fallback_preset_name as name_for


def fallback_preset_name(settings: RunSettings) -> str:
    """The offline preset a run falls back to when its model is missing: the same kind of solver."""
    return name_for(settings.stream)


def with_tiny_model(settings: RunSettings) -> RunSettings:
    """The fallback when the preset's model is not on this machine: the tiny model and the fallback preset's stream
    settings (its resolution and steps suit it, and its negative prompt: a preset's is written for its own model),
    under the same command line: every typed option is kept. The camera, the output, the preset's prompts and the
    controls stay the run's own. A ddim / dpmsolver++ preset falls back to `tiny-dpm` (the same kind of solver)."""
    fallback = settings.fallback
    if fallback is None:
        raise ValueError("with_tiny_model needs settings resolved with a model from a preset")
    return replace(settings, model=fallback.model, engine=fallback.engine, device=fallback.device,
                   threads=fallback.threads, stream=replace(fallback.stream, prompt=settings.stream.prompt),
                   fallback=None)


def is_offline_sink(spec: str) -> bool:
    """A file or the null sink: nobody watches in real time, so sources are read as fast as they are consumed."""
    return spec == "null" or Path(spec).suffix.lower() in (".mp4", ".avi", ".mkv", ".mov", ".webm")
