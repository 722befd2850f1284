"""`RunSettings`: everything one `vcam run` / `vcam bench` needs, resolved once from defaults < preset < flags.

The service and the benchmark take this object and nothing else, so a run is reproducible from its command line.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, replace

from core.config import StreamConfig, t_index_list_from_strength
from core.similarity import SimilarityFilterConfig
from engines.loading import ModelSpec
from engines.parallel_settings import DeviceSettings
from vcam.presets import Preset, PromptSpec, load_preset
from vcam.sinks import SinkConfig
from vcam.sources import SourceConfig


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
    engine: str = "auto"
    device: str = "auto"
    threads: int | None = None
    devices: DeviceSettings = DeviceSettings()
    frames: int | None = None
    preset: Preset | None = None
    model_from_preset: bool = False  # the model came from a preset (not --model): fall back to tiny if absent
    source_given: bool = False
    sink_given: bool = False


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = text.lower().split("x")
        return int(w), int(h)
    except ValueError:
        raise SettingsError(f"--output-size takes WIDTHxHEIGHT such as 1280x720, got {text!r}") from None


def _given(value):
    return value is not None


def _device_settings(args: argparse.Namespace) -> DeviceSettings:
    given = {key: value for key, value in (("devices", args.devices), ("parallel", args.parallel),
                                           ("warmup", args.asyncdiff_warmup), ("hosts", args.hosts)) if _given(value)}
    return DeviceSettings(**given)


def resolve_settings(args: argparse.Namespace, default_preset: str = "tiny") -> RunSettings:
    """Merge the preset (named by --preset, else `default_preset`) with the flags the user gave."""
    preset = load_preset(args.preset or default_preset)
    m, s, flt, cam, out = preset.model, preset.stream, preset.filter, preset.camera, preset.output

    # The preset's VAE belongs to the preset's model: a different --model keeps its own VAE unless --vae says.
    preset_vae = (m.vae or None) if args.model in (None, m.model) else None
    model = ModelSpec(
        model=args.model or m.model,
        vae=(None if args.vae == "none" else args.vae) if _given(args.vae) else preset_vae,
        lora=tuple(args.lora) if args.lora else tuple(m.lora),
        lora_scale=args.lora_scale if _given(args.lora_scale) else m.lora_scale,
        tokenizer=args.tokenizer,
    )
    if model.model == "tiny" and not _given(args.vae) and model.vae is None:
        model = replace(model, vae="tiny")  # the tiny demo ships its TAESD

    if _given(args.t_index_list) and (_given(args.strength) or _given(args.steps)):
        raise SettingsError("give either --t-index-list or --strength with --steps, not both")
    if _given(args.strength) or _given(args.steps):
        strength = args.strength if _given(args.strength) else (s.strength or 0.5)
        steps = args.steps if _given(args.steps) else (s.steps or len(s.resolved_t_index_list()))
        t_index_list = t_index_list_from_strength(strength, steps)
    elif _given(args.t_index_list):
        t_index_list = tuple(args.t_index_list)
    else:
        t_index_list = s.resolved_t_index_list()

    prompts = tuple(preset.prompts)
    prompt_text = args.prompt if _given(args.prompt) else (prompts[0].text if prompts else "a watercolor painting")
    if _given(args.prompt):
        prompts = (PromptSpec(name="custom", text=args.prompt, hotkey=None),) + prompts

    stream = StreamConfig(
        width=args.width if _given(args.width) else s.width,
        height=args.height if _given(args.height) else s.height,
        t_index_list=t_index_list,
        frame_buffer_size=args.frame_buffer if _given(args.frame_buffer) else s.frame_buffer,
        guidance=args.cfg if _given(args.cfg) else s.guidance,
        guidance_scale=args.guidance if _given(args.guidance) else s.guidance_scale,
        delta=args.delta if _given(args.delta) else s.delta,
        seed=args.seed if _given(args.seed) else s.seed,
        mode="txt2img" if args.txt2img else "img2img",
        prompt=prompt_text,
        negative_prompt=args.negative_prompt if _given(args.negative_prompt) else s.negative_prompt,
    )
    filt = SimilarityFilterConfig(
        enabled=False if args.no_ssf else flt.enabled,
        threshold=args.ssf_threshold if _given(args.ssf_threshold) else flt.threshold,
        max_skip=args.ssf_max_skip if _given(args.ssf_max_skip) else flt.max_skip,
        seed=stream.seed,
    )
    width, height = _size(args.output_size) if _given(args.output_size) else (out.width, out.height)
    sink_config = SinkConfig(
        width=width,
        height=height,
        fps=args.output_fps if _given(args.output_fps) else out.fps,
        fit=args.fit if _given(args.fit) else out.fit,
        mirror=bool(args.mirror) if _given(args.mirror) else out.mirror,
        backend=out.backend or None,
    )
    source_config = SourceConfig(
        width=cam.width or SourceConfig.width, height=cam.height or SourceConfig.height, fps=cam.fps or None
    )
    if _given(args.frames) and args.frames < 1:
        raise SettingsError(f"--frames must be at least 1, got {args.frames}")
    if _given(args.threads) and args.threads < 1:
        raise SettingsError(f"--threads must be at least 1, got {args.threads}")
    return RunSettings(
        model=model,
        stream=stream,
        filter=filt,
        source=args.source or cam.source,
        source_config=source_config,
        sink=args.sink or out.sink,
        sink_config=sink_config,
        prompts=prompts,
        engine=args.engine or m.engine,
        device=args.device or "auto",
        threads=args.threads,
        devices=_device_settings(args),
        frames=args.frames,
        preset=preset,
        model_from_preset=not args.model,
        source_given=bool(args.source),
        sink_given=bool(args.sink),
    )
