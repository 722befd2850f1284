"""`vcam bench`: the benchmark every issue reports with.

It runs the real pipeline (source thread -> inference thread -> sink thread) on the chosen model and settings and
compares it, in the same process, with the model alone: the same engine's VAE encode + UNet + VAE decode calls
back-to-back on ready tensors. `efficiency = fps / model_only_fps` therefore says how much of the model's speed the
product keeps; it is a ratio measured in one run, so it holds on any machine.
"""
from __future__ import annotations

import json
import resource
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import torch
from tqdm import tqdm

from core.pipeline import FramePipeline, PipelineConfig
from engines.base import Engine
from vcam.processor import DiffusionProcessor
from vcam.runtime import build_stream, create_engine_for, open_bench_io, warm_up
from vcam.settings import RunSettings


@dataclass(frozen=True)
class BenchResult:
    fields: dict[str, Any]

    def to_json(self) -> str:
        return json.dumps(self.fields, sort_keys=False)


def peak_rss_mb() -> float:
    """Peak resident memory of this process (Linux/macOS report ru_maxrss in KiB / bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024, 1)


def measure_model_only_fps(engine: Engine, stream_config, embeddings: torch.Tensor, frames: int) -> float:
    """Frames per second of the model alone: per group of F frames one encode, one UNet call of the stream's
    batch, one decode, on tensors prepared beforehand (no pre/post-processing, threads or queues)."""
    f, t = stream_config.frame_buffer_size, stream_config.unet_batch
    scale = engine.vae_scale_factor
    gen = torch.Generator().manual_seed(0)
    images = (torch.rand(f, 3, stream_config.height, stream_config.width, generator=gen) * 2 - 1).to(
        engine.device, engine.dtype
    )  # (F, 3, H, W)
    latents = torch.randn(
        t, engine.latent_channels, stream_config.height // scale, stream_config.width // scale, generator=gen
    ).to(engine.device, engine.dtype)  # (unet_batch, C, h, w)
    timesteps = torch.full((t,), 500, dtype=torch.long, device=engine.device)
    context = embeddings.expand(t, -1, -1).contiguous()  # (unet_batch, tokens, dim)
    calls = max(1, frames // f)

    def one_group() -> None:
        engine.encode_images(images)
        noise = engine.predict_noise(latents, timesteps, context)
        engine.decode_latents(noise[:f])

    def timed() -> float:
        one_group()  # first call allocates; not part of the limit
        _sync(engine)
        start = time.perf_counter()
        for _ in range(calls):
            one_group()
        _sync(engine)
        return calls * f / (time.perf_counter() - start)

    # On a fresh thread, as the pipeline's inference thread is: CPU thread pools and flush-to-zero state are per
    # thread, and the limit must be measured under the same conditions as the run it is compared with.
    outcome: list = []

    def run() -> None:
        try:
            outcome.append(timed())
        except BaseException as error:  # noqa: BLE001 - re-raised on the caller's thread below
            outcome.append(error)

    worker = threading.Thread(target=run, name="vcam-model-only")
    worker.start()
    worker.join()
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0]


def _sync(engine: Engine) -> None:
    if engine.device.type == "cuda":
        torch.cuda.synchronize(engine.device)


def run_bench(settings: RunSettings, progress: bool = True) -> BenchResult:
    frames = settings.frames or 100
    build_start = time.perf_counter()
    engine = create_engine_for(settings)
    build_seconds = time.perf_counter() - build_start
    stream = build_stream(engine, settings)
    warm_up(stream)  # fill the rolling buffer and allocate, outside the timed run

    source, sink = open_bench_io(settings)
    processor = DiffusionProcessor(stream, fit=settings.sink_config.fit)
    pipeline = FramePipeline(source, processor, sink, PipelineConfig(max_frames=frames))
    unet_calls_before = stream.unet_calls
    bar = tqdm(total=frames, desc="vcam bench", unit="frame", file=sys.stderr, disable=not progress, leave=False)
    start = time.perf_counter()
    pipeline.start()
    try:
        while not pipeline.wait(timeout=0.25):
            bar.n = pipeline.stats().written
            bar.refresh()
    finally:
        seconds = time.perf_counter() - start
        pipeline.stop()
        bar.close()
    if pipeline.error is not None:
        raise pipeline.error
    stats = pipeline.stats()
    fps = stats.written / seconds if seconds > 0 else 0.0

    embeddings = stream.prompts.cache.get(stream.prompts.text).to(engine.device, engine.dtype)
    model_only_fps = measure_model_only_fps(engine, stream.config, embeddings, frames)
    cfg = stream.config
    return BenchResult(
        {
            "model": settings.model.model,
            "engine": engine.name,
            "device": str(engine.device),
            "width": cfg.width,
            "height": cfg.height,
            "steps": cfg.steps,
            "t_index_list": list(cfg.t_index_list),
            "cfg": cfg.guidance,
            "frame_buffer": cfg.frame_buffer_size,
            "unet_batch": cfg.unet_batch,
            "frames": stats.written,
            "seconds": round(seconds, 3),
            "fps": round(fps, 3),
            "model_only_fps": round(model_only_fps, 3),
            "efficiency": round(fps / model_only_fps, 4) if model_only_fps else None,
            "unet_calls": stream.unet_calls - unet_calls_before,
            "skipped": stats.skipped,
            "dropped": stats.dropped,
            "latency_ms_p50": round(stats.latency_ms_p50, 2),
            "latency_ms_p95": round(stats.latency_ms_p95, 2),
            "peak_rss_mb": peak_rss_mb(),
            "build_seconds": round(build_seconds, 3),
            "threads": torch.get_num_threads(),
        }
    )
