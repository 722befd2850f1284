"""Several devices on this machine: the stream on 1, 2 and 3 processes, pipeline and AsyncDiff, side by side.

    python bench/multidevice.py                       # tiny model, 256x256, 2 steps, RCFG self: a JSON line per run
    python bench/multidevice.py --processes 1 2 --frames 20 --cfg full

Per run: fps and per-frame latency p50/p95 of `DiffusionStream.process` (VAE encode + UNet stages + VAE decode,
one frame at a time, as the inference thread calls it), then per stage the compute and transfer time and the bytes
sent per call, and for AsyncDiff the PSNR of its frames against the exact stream on the same moving frames.
The threads of the machine's cores are shared between the processes (`threads // N` each).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.config import StreamConfig  # noqa: E402
from core.prompts import PromptCache, PromptSwitcher  # noqa: E402
from core.stream import DiffusionStream  # noqa: E402
from engines.base import EngineShapes  # noqa: E402
from engines.factory import create_engine  # noqa: E402
from engines.loading import ModelSpec  # noqa: E402
from engines.parallel_settings import DeviceSettings  # noqa: E402


def moving_frames(count: int, size: int) -> list[torch.Tensor]:
    """A square sliding over a gradient (consecutive frames close, as from a camera), (1, 3, H, W) in [0, 1]."""
    base = torch.linspace(0, 1, size).expand(size, size)
    frames = []
    for index in range(count):
        frame = torch.stack([base, base.T, 1 - base]).clone()
        top = (size // 8 + index * size // 64) % (size // 2)
        frame[:, top: top + size // 4, size // 3: size // 3 + size // 4] = 1.0
        frames.append(frame[None])
    return frames


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a - b) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def run(engine, config: StreamConfig, frames: list[torch.Tensor], untimed: int):
    """Outputs, seconds per timed frame, and the stage figures at the start of the timed frames (or None)."""
    cache = PromptCache(engine.encode_prompt)
    cache.prefill([config.prompt, config.negative_prompt])
    stream = DiffusionStream(engine, config, PromptSwitcher(cache, config.negative_prompt, config.prompt))
    outputs, seconds, before = [], [], None
    for index, frame in enumerate(frames):
        if index == untimed and hasattr(engine, "stats"):
            before = engine.stats()
        start = time.perf_counter()
        outputs.append(stream.process(frame))
        seconds.append(time.perf_counter() - start)
    return outputs, seconds[untimed:], before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--warmup-frames", type=int, default=4, help="untimed frames before the timed ones")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--t-index-list", default="32,45")
    parser.add_argument("--cfg", default="self")
    parser.add_argument("--asyncdiff-warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()

    spec = _model_spec(args.model)
    config = StreamConfig(width=args.size, height=args.size, guidance=args.cfg, guidance_scale=1.5,
                          t_index_list=tuple(int(t) for t in args.t_index_list.split(",")),
                          prompt="a watercolor painting", negative_prompt="blurry")
    shapes = EngineShapes(args.size, args.size, 1, config.unet_batch)
    frames = moving_frames(args.warmup_frames + args.frames, args.size)
    exact: list[torch.Tensor] | None = None
    for processes in args.processes:
        modes = ["one device"] if processes == 1 else ["pipeline", "asyncdiff"]
        for mode in modes:
            if processes == 1:
                engine = create_engine("torch", spec, shapes, device="cpu", threads=args.threads)
            else:
                settings = DeviceSettings(devices=f"cpu:{processes}", parallel=mode, warmup=args.asyncdiff_warmup)
                engine = create_engine("torch", spec, shapes, devices=settings, threads=args.threads)
            outputs, timed, before = run(engine, config, frames, args.warmup_frames)
            report = {"processes": processes, "parallel": mode, "guidance": config.guidance, "unet_batch": config.unet_batch,
                      "fps": round(len(timed) / sum(timed), 3),
                      "latency_ms_p50": round(1000 * statistics.median(timed), 1),
                      "latency_ms_p95": round(1000 * sorted(timed)[int(0.95 * (len(timed) - 1))], 1)}
            if exact is None:
                exact = outputs
            elif mode == "asyncdiff" or mode == "pipeline":
                after = outputs[args.warmup_frames:]
                report["psnr_vs_exact_db"] = round(min(psnr(a, b) for a, b in zip(after, exact[args.warmup_frames:])), 2)
            if before is not None:
                report["stages"] = engine.stats().per_call_since(before)
                engine.close()
            print(json.dumps(report), flush=True)


def _model_spec(name: str) -> ModelSpec:
    """`tiny` runs with its TAESD, as `--model tiny` does, so the UNet dominates the frame time."""
    if name != "tiny":
        return ModelSpec(model=name)
    from engines.testmodel import ensure_tiny_model

    paths = ensure_tiny_model()
    return ModelSpec(model=str(paths.model_dir), vae=str(paths.taesd_dir))


if __name__ == "__main__":
    main()
