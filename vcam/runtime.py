"""Building the model side of a run from `RunSettings`: the engine, the prompt cache and the diffusion stream.

Shared by `vcam run` and `vcam bench`, so the benchmark measures exactly what the service runs.
"""
from __future__ import annotations

import logging
from dataclasses import replace
from typing import Callable

import torch

from core.prompts import PromptCache, PromptSwitcher
from core.similarity import SimilarityFilter
from core.stream import DiffusionStream
from engines.base import Engine, EngineShapes
from engines.prompt_tokens import PromptLength
from vcam.settings import RunSettings


def engine_shapes(settings: RunSettings) -> EngineShapes:
    cfg = settings.stream
    return EngineShapes(width=cfg.width, height=cfg.height, frame_batch=cfg.frame_buffer_size, unet_batch=cfg.unet_batch)


TORCH_COMPUTE_ENGINES = ("torch", "torch-compile")


def create_engine_for(settings: RunSettings, owns_process: bool = False) -> Engine:
    """The engine the settings name. `owns_process`: this run is the whole process (the CLI's run, bench and demo),
    so it may size torch's thread pool, which is process-wide; an embedding application keeps its own setting."""
    from engines.factory import create_engine

    engine = create_engine(
        settings.engine,
        settings.model,
        engine_shapes(settings),
        device=settings.device,
        threads=settings.threads,
        devices=settings.devices,
        precision=settings.precision,
    )
    if owns_process and engine.name not in TORCH_COMPUTE_ENGINES and engine.device.type == "cpu":
        # The model runs in another runtime's thread pool (ONNX Runtime's was sized when its session was built);
        # torch only does the stream's glue (scaling, clamps). A torch pool of its own would compete with it for the
        # same cores: measured on 2 cores, efficiency 0.93 with both pools, 0.95+ with torch on one thread.
        torch.set_num_threads(1)
        logging.getLogger("vcam").debug("torch: one thread for the stream's glue; %s computes in its own pool",
                                        engine.name)
    return engine


def unet_precision(engine: Engine, requested: str) -> str:
    """The UNet's precision as it ran: int8 when asked (engines.quantize; its first calls calibrate in fp32),
    OpenVINO's resolved fp32 / bf16, else the engine's dtype (torch: fp32 on the CPU, fp16 on CUDA)."""
    if requested == "int8":
        return "int8"
    resolved = getattr(engine, "unet_precision", None)
    if resolved:
        return resolved
    dtype = getattr(engine, "dtype", torch.float32)
    return {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, "fp32")


def build_stream(engine: Engine, settings: RunSettings,
                 notify: Callable[[str], None] | None = None) -> DiffusionStream:
    """The stream with every preset prompt encoded ahead, so later switches never call the text encoder. `notify`
    hears one line per prompt the text encoder cuts (see `engines.prompt_tokens`)."""
    cache = PromptCache(engine.encode_prompt)
    texts = dict.fromkeys([settings.stream.prompt, settings.stream.negative_prompt, *(p.text for p in settings.prompts)])
    say_cut_prompts(PromptLength.for_model(settings.model), list(texts), notify or logging.getLogger("vcam").info)
    ahead = cache.prefill(list(texts))
    if ahead < len(texts):  # bounded memory: a preset of 10,000 prompts must not encode (and hold) them all
        logging.getLogger("vcam").warning(
            "%d of %d prompt texts are encoded ahead (the prompt cache holds %d); the others are encoded when first "
            "used", ahead, len(texts), cache.capacity)
    prompts = PromptSwitcher(cache, negative_prompt=settings.stream.negative_prompt, prompt=settings.stream.prompt)
    similarity = SimilarityFilter(settings.filter)
    return DiffusionStream(engine, settings.stream, prompts, similarity)


def say_cut_prompts(length: PromptLength, texts: list[str], notify: Callable[[str], None]) -> None:
    """One line for each text the text encoder would cut (said once: at start-up, or when the text arrives)."""
    for text in texts:
        if (notice := length.cut_notice(text)) is not None:
            notify(f"note: {notice}")  # a note like the settings' own (`vcam.cli._say`): the run goes on


def warm_up(stream: DiffusionStream) -> None:
    """Run T frames of mid-grey (txt2img: noise) through the stream before going live: first calls allocate and
    the rolling buffer fills, so the first published frame is fully denoised and on time."""
    cfg = stream.config
    grey = None if cfg.mode == "txt2img" else torch.full((cfg.frame_buffer_size, 3, cfg.height, cfg.width), 0.5)
    stream.warmup(grey)


def open_bench_io(settings: RunSettings):
    """Bench reads a non-live source as fast as it is consumed (synthetic unless --source) and writes to the null
    sink unless --sink names one: the run is limited by the model, which is what `efficiency` is about."""
    from vcam.sinks import open_sink
    from vcam.sources import open_source

    source_spec = settings.source if settings.source_given else "synthetic"
    source = open_source(source_spec, replace(settings.source_config, live=False))
    sink = open_sink(settings.sink if settings.sink_given else "null", settings.sink_config)
    return source, sink
