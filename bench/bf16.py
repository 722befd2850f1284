"""bf16 UNet figures (`--precision bf16` / `auto` on OpenVINO): speed at real size, picture quality on the tiny model.

    python bench/bf16.py speed [--model sd21-shape] [--size 512] [--rounds 5]   # UNet calls, fp32 / bf16 alternated
    python bench/bf16.py quality [--frames 24]     # trained tiny model, moving sample, 256x256, every style's prompt

speed: two OpenVINO engines over the same cached graphs (`engines.openvino_engine`, the engine's own compile
settings; the graphs are built on a cache miss), one with its UNet in fp32 and one in bf16; their UNet calls (the
batch the shapes give, keys / values projected once) timed alternately, the order swapped every round; prints each
round's ratio fp32 / bf16 and the median. On a CPU without native bf16 the bf16 engine says so and runs fp32.

quality: the same two engines on the trained tiny model run the same stream (tiny preset settings, 2 steps) over
the moving sample source, once per style prompt; PSNR / SSIM of the bf16 output frames against the fp32 ones.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.tiny_figures import PRESET_SLOTS, sample_agreement  # noqa: E402
from engines.base import EngineShapes  # noqa: E402
from engines.loading import ModelSpec  # noqa: E402


def engines(spec: ModelSpec, shapes: EngineShapes, threads: int, cache_root: Path | None) -> dict:
    from engines.openvino_engine import OpenVinoOptions, create_openvino_engine

    return {precision: create_openvino_engine(spec, shapes, "cpu", threads, OpenVinoOptions(
        cache_root=cache_root, check_in_background=False, unet_precision=precision)) for precision in ("fp32", "bf16")}


def speed(model: str, vae: str, size: int, rounds: int, threads: int, cache_root: Path | None) -> dict:
    from engines.onnx_export import example_inputs, predict_noise_spec

    shapes = EngineShapes(width=size, height=size, frame_batch=1, unet_batch=1)
    pair = engines(ModelSpec(model=model, vae=vae), shapes, threads, cache_root)
    graphs = pair["fp32"].graphs
    inputs = example_inputs(predict_noise_spec(graphs.shapes, graphs.dims), seed=0)
    outputs = {name: engine.predict_noise(*inputs) for name, engine in pair.items()}  # warm-up, K/V projected
    difference = float((outputs["bf16"] - outputs["fp32"]).norm() / outputs["fp32"].norm())
    ratios = []
    for index in range(rounds):
        seconds = {}
        for name in (("fp32", "bf16") if index % 2 == 0 else ("bf16", "fp32")):
            started = time.perf_counter()
            pair[name].predict_noise(*inputs)
            seconds[name] = time.perf_counter() - started
        ratios.append(seconds["fp32"] / seconds["bf16"])
        print(f"round {index + 1}: fp32 {seconds['fp32']:.3f} s, bf16 {seconds['bf16']:.3f} s, "
              f"ratio {ratios[-1]:.2f}", file=sys.stderr, flush=True)
    return {"model": model, "size": size, "unet_batch": shapes.unet_batch, "bf16_in_use": pair["bf16"].unet_precision,
            "ratios": [round(r, 3) for r in ratios], "median_ratio": round(statistics.median(ratios), 3),
            "relative_rms_difference": round(difference, 5)}


def quality(frames: int, threads: int, cache_root: Path | None, size: int = 256) -> dict:
    from engines.tiny.styles import STYLES

    shapes = EngineShapes(width=size, height=size, frame_batch=1, unet_batch=len(PRESET_SLOTS))
    pair = engines(ModelSpec(model="tiny"), shapes, threads, cache_root)
    results = {"bf16_in_use": pair["bf16"].unet_precision}
    for prompt in STYLES:  # scored once the stream's buffer has filled
        results[prompt] = sample_agreement(pair["fp32"], pair["bf16"], prompt, frames, 2, size)
        print(prompt, results[prompt], file=sys.stderr, flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("speed", "quality"))
    parser.add_argument("--model", default="sd21-shape")
    parser.add_argument("--vae", default="taesd-shape")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache-root", type=Path, default=None, help="the engine cache (default: the user's)")
    args = parser.parse_args()
    if args.what == "speed":
        result = speed(args.model, args.vae, args.size, args.rounds, args.threads, args.cache_root)
    else:
        result = quality(args.frames, args.threads, args.cache_root)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
