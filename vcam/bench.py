"""`vcam bench`: the benchmark every issue reports with.

It runs the real pipeline (source thread -> inference thread -> sink thread) on the chosen model and settings and
compares it, in the same process, with the model alone: the stream's own VAE encode + UNet + VAE decode calls
replayed back-to-back on the exact tensors it gave them, timed before and after the run and averaged.
`efficiency = fps / model_only_fps` therefore says how much of the model's speed the product keeps; it is a ratio
measured in one run, so it holds on any machine.
"""
from __future__ import annotations

import json
import logging
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import psutil
import torch
from tqdm import tqdm

from core.pipeline import FramePipeline, PipelineConfig
from engines.base import Engine
from vcam.processor import DiffusionProcessor
from vcam.runtime import build_stream, create_engine_for, open_bench_io, unet_precision, warm_up
from vcam.settings import RunSettings


@dataclass(frozen=True)
class BenchResult:
    fields: dict[str, Any]

    def to_json(self) -> str:
        return json.dumps(self.fields, sort_keys=False)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB.

    psutil reports the peak only on Windows (`peak_wset`); on Linux and macOS the kernel keeps it in getrusage's
    ru_maxrss (KiB on Linux, bytes on macOS), and `resource` exists exactly there, so it is imported only there.
    """
    memory = psutil.Process().memory_info()
    if hasattr(memory, "peak_wset"):
        return round(memory.peak_wset / (1024 * 1024), 1)
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024, 1)


class LastInputsEngine:
    """Delegates to an engine and keeps the inputs of its last encode, UNet and decode calls, so that the model-only
    limit is timed on exactly the tensors the stream gave the model (the same shapes, values and timesteps; on the
    CPU even the values matter, through denormals)."""

    def __init__(self, engine: Engine) -> None:
        self.inner = engine
        self.last_images: torch.Tensor | None = None
        self.last_unet: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self.last_latents: torch.Tensor | None = None

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def encode_prompt(self, texts):
        return self.inner.encode_prompt(texts)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        self.last_images = images
        return self.inner.encode_images(images)

    def predict_noise(self, latents: torch.Tensor, timesteps: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        self.last_unet = (latents, timesteps, embeddings)
        return self.inner.predict_noise(latents, timesteps, embeddings)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        self.last_latents = latents
        return self.inner.decode_latents(latents)


def measure_model_only_fps(engine: LastInputsEngine, frames_per_call: int, frames: int) -> float:
    """Frames per second of the model alone: per group of F frames the stream's own encode, UNet and decode calls,
    replayed back-to-back on the inputs it last gave them (no pre/post-processing, threads or queues)."""
    images, unet_inputs, latents = engine.last_images, engine.last_unet, engine.last_latents
    if images is None or unet_inputs is None or latents is None:
        raise RuntimeError("the stream made no model call to replay; run `vcam bench` with more --frames")
    calls = max(1, frames // frames_per_call)
    model = engine.inner

    def one_group() -> None:
        model.encode_images(images)
        model.predict_noise(*unet_inputs)
        model.decode_latents(latents)

    def timed() -> float:
        one_group()  # first call allocates; not part of the limit
        _sync(model)
        start = time.perf_counter()
        for _ in range(calls):
            one_group()
        _sync(model)
        return calls * frames_per_call / (time.perf_counter() - start)

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


class BuildProgress(logging.Handler):
    """A progress bar on stderr, fed by the build steps an engine logs (`engines.onnx_export.log_build_step`): the
    first ONNX Runtime export takes minutes, and a bench that prints nothing meanwhile looks hung."""

    def __init__(self, enabled: bool) -> None:
        super().__init__(logging.DEBUG)
        self.enabled = enabled
        self.bar: tqdm | None = None

    def emit(self, record: logging.LogRecord) -> None:
        step = getattr(record, "build_step", None)
        if step is None or not self.enabled:
            return
        done, total, what = step
        if self.bar is None:
            self.bar = tqdm(total=total, unit="step", file=sys.stderr, leave=False)
        self.bar.set_description_str(f"building: {what}", refresh=False)
        self.bar.n = done
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        super().close()


def create_engine_with_progress(settings: RunSettings, progress: bool, owns_process: bool = False) -> Engine:
    """`create_engine_for`, showing the build steps it logs as a bar (a cached engine logs none: no bar)."""
    logger = logging.getLogger("vcam.engines.build")
    handler, level = BuildProgress(progress), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)  # the steps are DEBUG records: the log file keeps them, the terminal does not
    try:
        return create_engine_for(settings, owns_process=owns_process)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        handler.close()


def run_bench(settings: RunSettings, progress: bool = True, model_only: bool = True,
              owns_process: bool = False) -> BenchResult:
    """Run the pipeline for `settings.frames` frames; `model_only=False` skips timing the model alone (then
    `model_only_fps` and `efficiency` are None), which at real model sizes takes as long as the run itself.
    `owns_process`: the CLI's bench, which may size torch's process-wide thread pool (see create_engine_for)."""
    frames = settings.frames or 100
    build_start = time.perf_counter()
    engine = LastInputsEngine(create_engine_with_progress(settings, progress, owns_process))
    build_seconds = time.perf_counter() - build_start
    stream = build_stream(engine, settings)
    warm_up(stream)  # fill the rolling buffer and allocate, outside the timed run
    # The limit is timed before and after the run (half the frames each) and averaged: machine speed drifts by
    # several percent over a minute, and two timings that bracket the run cancel a steady drift. (Taking the faster
    # of two noisy timings instead would bias the efficiency low by about half the noise.)
    model_only_before = (measure_model_only_fps(engine, stream.config.frame_buffer_size, max(1, frames // 2))
                         if model_only else None)

    source, sink = open_bench_io(settings)
    processor = DiffusionProcessor(stream, fit=settings.sink_config.fit)
    pipeline = FramePipeline(source, processor, sink, PipelineConfig(max_frames=frames))
    unet_calls_before = stream.unet_calls
    stages_before = engine.inner.stats() if hasattr(engine.inner, "stats") else None
    bar = tqdm(total=frames, desc="vcam bench", unit="frame", file=sys.stderr, disable=not progress, leave=False)
    start, cpu_start = time.perf_counter(), time.process_time()
    pipeline.start()
    try:
        while not pipeline.wait(timeout=0.25):
            bar.n = pipeline.stats().written
            bar.refresh()
    finally:
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
        pipeline.stop()
        bar.close()
    if pipeline.error is not None:
        raise pipeline.error
    stats = pipeline.stats()
    fps = stats.written / seconds if seconds > 0 else 0.0

    stage_fields = {} if stages_before is None else {
        "devices": settings.devices.device_list(), "parallel": engine.inner.parallel,
        "stages": engine.inner.stats().per_call_since(stages_before)}
    model_only_fps = None
    if model_only:
        model_only_after = measure_model_only_fps(engine, stream.config.frame_buffer_size, max(1, frames // 2))
        model_only_fps = (model_only_before + model_only_after) / 2
    cfg = stream.config
    return BenchResult(
        {
            "model": settings.model.model,
            "engine": engine.name,
            "device": str(engine.device),
            "precision": unet_precision(engine, settings.precision),
            "width": cfg.width,
            "height": cfg.height,
            "steps": cfg.steps,
            "scheduler": cfg.scheduler,
            # lcm picks its slots on the consistency grid; ddim / dpmsolver++ run the tail of their own schedule
            "t_index_list": list(cfg.t_index_list) if cfg.scheduler == "lcm" else None,
            "num_inference_steps": cfg.num_inference_steps if cfg.scheduler != "lcm" else None,
            "guidance": cfg.guidance,
            "frame_buffer_size": cfg.frame_buffer_size,
            "unet_batch": cfg.unet_batch,
            "frames": stats.written,
            "seconds": round(seconds, 3),
            "fps": round(fps, 3),
            "model_only_fps": round(model_only_fps, 3) if model_only_fps else None,
            "efficiency": round(fps / model_only_fps, 4) if model_only_fps else None,
            # CPU time of the whole process (every thread) during the run: the power proxy on a CPU
            "cpu_seconds": round(cpu_seconds, 3),
            "unet_calls": stream.unet_calls - unet_calls_before,
            "skipped": stats.skipped,
            "dropped": stats.dropped,
            "latency_ms_p50": round(stats.latency_ms_p50, 2),
            "latency_ms_p95": round(stats.latency_ms_p95, 2),
            "peak_rss_mb": peak_rss_mb(),
            "build_seconds": round(build_seconds, 3),
            # the threads the model computes on: an ONNX Runtime / OpenVINO pool of its own, else torch's (which is
            # then one thread of glue, `vcam.runtime`)
            "threads": getattr(engine, "threads", None) or torch.get_num_threads(),
            **stage_fields,
        }
    )
