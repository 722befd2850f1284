"""What a run falls back to when the machine lacks what its preset names: the offline tiny model for a missing
model, and whether the output is offline (a file or null: nobody watches in real time)."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable

from engines.base import ModelError
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


def settle_model(settings: RunSettings, notify: Callable[[str], None]) -> RunSettings:
    """The settings a run goes on with: its own when its model is on this machine; else, for a model the preset
    named, the tiny fallback (`with_tiny_model`), said in one line that names what was kept. Raises the one-line
    ModelError for a model typed on the command line. Reads files only (no torch): the CLI settles before it loads
    the service, so a missing model answers in well under a second, before any camera or device is opened."""
    from engines.loading import resolve_model

    try:
        resolve_model(settings.model)  # `tiny` is built into the user cache here if it is not there yet
        return settings
    except ModelError as error:
        if not settings.model_from_preset:
            raise
        missing = error
    fallback = with_tiny_model(settings)
    typed = settings.given_options
    kept = f"; kept from the command line: {', '.join(typed)}" if typed else ""
    line = (f"{missing} -- using the offline '{fallback_preset_name(settings)}' preset's model and stream settings "
            f"instead{kept}")
    if settings.preset is not None and settings.preset.prompts:
        names = ", ".join(repr(prompt.name) for prompt in settings.preset.prompts)
        line += (f"; {settings.preset.name}'s prompts ({names}) stay, and the tiny model does not know them: it draws "
                 f"its five styles (`--preset {fallback_preset_name(settings)}` names them)")
    notify(line)
    return fallback


def is_offline_sink(spec: str) -> bool:
    """A file or the null sink: nobody watches in real time, so sources are read as fast as they are consumed."""
    return spec == "null" or Path(spec).suffix.lower() in (".mp4", ".avi", ".mkv", ".mov", ".webm")
