"""`RunSettings`: everything one `vcam run` / `vcam bench` needs, resolved once from defaults < preset < flags.

The service and the benchmark take this object and nothing else, so a run is reproducible from its command line.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from typing import Any, Callable

from core.config import SimilarityFilterConfig, StreamConfig, stream_steps
from engines.loading import ModelSpec
from engines.parallel_settings import DeviceSettings
from vcam.options import given_values, option_name
from vcam.presets import Preset, PromptSpec, load_preset
from vcam.sections import (GROUPS_BY_KEY, CameraSection, ModelSection, ObsSection, OscSection, OutputSection,
                           SlotChoice, check_value, user_fields)
from vcam.sinks import SinkConfig, check_sink_spec
from vcam.sources import SourceConfig, check_source_spec


class SettingsError(ValueError):
    """A combination of options that cannot work; the message names the option and the fix."""


@dataclass(frozen=True)
class RunSettings:
    model: ModelSpec
    stream: StreamConfig
    filter: SimilarityFilterConfig
    source: str
    source_config: SourceConfig
    sink: str
    sink_config: SinkConfig
    prompts: tuple[PromptSpec, ...]
    engine: str  # these four are ModelSection's (defaults there): how the model runs
    device: str
    threads: int | None
    precision: str  # the UNet's: "auto", "fp32", "bf16" (engines.openvino_engine) or "int8" (engines.quantize)
    devices: DeviceSettings = DeviceSettings()
    obs: ObsSection = ObsSection()  # the OBS control: the preset's [obs] with `vcam run --obs / --no-obs`
    osc: OscSection = OscSection()  # the OSC control: the preset's [osc] with `vcam run --osc / --no-osc`
    frames: int | None = None
    preset: Preset | None = None
    model_from_preset: bool = False  # the model came from a preset (not --model): fall back to tiny if absent
    source_given: bool = False
    sink_given: bool = False
    given_options: tuple[str, ...] = ()  # the options typed on the command line, as typed names (--engine, ...)
    # What runs when the preset's model is missing: the fallback preset's model and stream settings under the same
    # command line (so every typed option is kept); None when the model was typed or is the tiny model already.
    fallback: RunSettings | None = None


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = text.lower().split("x")
        return int(w), int(h)
    except ValueError:
        raise SettingsError(f"--output-size takes WIDTHxHEIGHT such as 1280x720, got {text!r}") from None


def _merged(args: argparse.Namespace, key: str, cls: type, base: Any, extra: dict[str, Any] | None = None,
            extra_option: str = "") -> Any:
    """`base` (defaults < preset) with the fields the command line gave, each checked as a preset value is (same
    types and ranges, the error naming the option instead of the file). `extra`: fields given by another option,
    `extra_option`, which an error in them names (`--output-size` gives the output's width and height)."""
    group = GROUPS_BY_KEY[key]
    given = {**given_values(args, group, cls), **(extra or {})}
    for f, hint in user_fields(cls, where="cli"):
        if f.name in given:
            named = extra_option if extra and f.name in extra and extra_option else option_name(group, f)

            def fail(_key: str, message: str, option: str = named) -> SettingsError:
                return SettingsError(f"{option}: {message}")

            given[f.name] = check_value(given[f.name], hint, f.metadata, f.name, fail)
    return replace(base, **given)


def fallback_preset_name(stream: StreamConfig) -> str:
    """The offline preset a run falls back to when its model is missing: the same kind of solver."""
    return "tiny" if stream.scheduler == "lcm" else "tiny-dpm"


def given_options(args: argparse.Namespace) -> tuple[str, ...]:
    """The setting options the command line gave, by their option names (for the lines that say what was kept)."""
    names = [option_name(group, f) for group in GROUPS_BY_KEY.values() for cls in group.classes
             for f, _ in user_fields(cls, where="cli") if getattr(args, f"{group.key}.{f.name}", None) is not None]
    return tuple(names + (["--output-size"] if args.output_size is not None else []))


def resolve_settings(args: argparse.Namespace, default_preset: str = "tiny",
                     notify: Callable[[str], None] | None = None, *,
                     preset_name: str | None = None) -> RunSettings:
    """Merge the preset (named by --preset, else `default_preset`) with the flags the user gave, field by field.
    `notify` hears the preset's notices (old key spellings) as soon as it is read, before any later error, then
    once each the stream settings of the run that change nothing (`StreamConfig.ineffective_settings`)."""
    preset = load_preset(preset_name or args.preset or default_preset)
    notify = notify or (lambda _line: None)
    preset_stream_notes = preset.stream.ineffective_settings()
    for notice in preset.notices:  # old key spellings now; the stream's notes once the flags are merged
        if not notice.endswith(preset_stream_notes):
            notify(notice)
    model_args = given_values(args, GROUPS_BY_KEY["model"], ModelSection)
    m = _merged(args, "model", ModelSection, preset.model)
    # The preset's VAE belongs to the preset's model: a different --model keeps its own VAE unless --vae says.
    vae_given = "vae" in model_args
    preset_vae = (preset.model.vae or None) if m.model == preset.model.model else None
    vae = (None if m.vae == "none" else m.vae) if vae_given else preset_vae
    if m.model == "tiny" and not vae_given and vae is None:
        vae = "tiny"  # the tiny demo ships its TAESD
    model = ModelSpec(model=m.model, vae=vae, lora=m.lora, lora_scale=m.lora_scale, tokenizer=m.tokenizer or None)

    stream = _merged_stream(args, preset)
    for note in stream.ineffective_settings():  # said with the preset's file name when the preset set it
        notify(next((notice for notice in preset.notices if notice.endswith(note)), note))
    prompts = tuple(preset.prompts)
    if "prompt" in given_values(args, GROUPS_BY_KEY["stream"], StreamConfig):
        prompts = (PromptSpec(name="custom", text=stream.prompt, hotkey=None),) + prompts

    filt = replace(_merged(args, "filter", SimilarityFilterConfig, preset.filter), seed=stream.seed)
    size = dict(zip(("width", "height"), _size(args.output_size))) if args.output_size is not None else {}
    out = _merged(args, "output", OutputSection, preset.output, size, extra_option="--output-size")
    sink_config = SinkConfig(width=out.width, height=out.height, fps=out.fps, fit=out.fit, mirror=out.mirror,
                             backend=out.backend or None)
    cam = _merged(args, "camera", CameraSection, preset.camera)
    source_config = SourceConfig(width=cam.width, height=cam.height, fps=cam.fps or None)  # 0: the camera's own
    if args.frames is not None and args.frames < 1:
        raise SettingsError(f"--frames must be at least 1, got {args.frames}")
    check_sink_spec(out.sink)  # a mistake there is one line now, before the camera and the model libraries
    check_source_spec(cam.source)
    model_from_preset = "model" not in model_args
    fallback = None
    if model_from_preset and preset_name is None and model.model != "tiny":
        # Resolved now, before anything opens, so a wrong option is one error whichever model runs; only the model
        # and the stream's defaults come from the fallback preset, every typed option applies to both.
        fallback = resolve_settings(args, preset_name=fallback_preset_name(stream))
    return RunSettings(
        model=model,
        stream=stream,
        filter=filt,
        source=cam.source,
        source_config=source_config,
        sink=out.sink,
        sink_config=sink_config,
        prompts=prompts,
        engine=m.engine,
        device=m.device,
        threads=m.threads,
        precision=m.precision,
        devices=_merged(args, "devices", DeviceSettings, preset.devices),
        obs=_merged(args, "obs", ObsSection, preset.obs),
        osc=_merged(args, "osc", OscSection, preset.osc),
        frames=args.frames,
        preset=preset,
        model_from_preset=model_from_preset,
        source_given="source" in given_values(args, GROUPS_BY_KEY["camera"], CameraSection),
        sink_given="sink" in given_values(args, GROUPS_BY_KEY["output"], OutputSection),
        given_options=given_options(args),
        fallback=fallback,
    )


def _merged_stream(args: argparse.Namespace, preset: Preset) -> StreamConfig:
    """The preset's StreamConfig with the stream flags; --strength/--steps set the steps (lcm: t_index_list,
    combined with the preset's own strength/steps; ddim / dpmsolver++: the schedule length and strength, see
    `core.config.stream_steps`), and cannot be mixed with --t-index-list."""
    slot_args = given_values(args, GROUPS_BY_KEY["stream"], SlotChoice)
    stream_args = given_values(args, GROUPS_BY_KEY["stream"], StreamConfig)
    slots = _merged(args, "stream", SlotChoice, SlotChoice())
    scheduler = stream_args.get("scheduler", preset.stream.scheduler)
    extra: dict[str, Any] = {}
    if "t_index_list" in stream_args and slot_args:
        raise SettingsError("give either --t-index-list or --strength with --steps, not both")
    if slot_args or scheduler != preset.stream.scheduler:
        strength = slots.strength if slots.strength is not None else preset.slots.strength
        steps = slots.steps if slots.steps is not None else preset.slots.steps
        if scheduler == "lcm":  # the preset's own slot count, else StreamConfig's default
            default_steps = preset.stream.steps if preset.stream.scheduler == "lcm" else None
        else:
            default_steps = preset.stream.num_inference_steps
        extra.update(stream_steps(scheduler, strength, steps, default_steps))
    return _merged(args, "stream", StreamConfig, preset.stream, extra)
