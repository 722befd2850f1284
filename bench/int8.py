"""INT8 UNet figures: picture quality on the trained tiny model, speed at 512x512 real size.

    python bench/int8.py quality [--frames 24]       # tiny model, sample source, 256x256: int8 output vs fp32 output
    python bench/int8.py speed [--size 512] [--rounds 3] [--work DIR]   # SD 1.5-shape UNet, random weights
    python bench/int8.py speed --unet tiny --size 256 --work DIR         # the trained tiny UNet

quality: two ONNX Runtime engines over the same cached graphs run the same stream (tiny preset settings, 2 steps)
over the moving sample source; one is put on `--precision int8` (engines.quantize), which calibrates on the
stream's first calls. Prints PSNR / SSIM of the int8 output frames against the fp32 ones, after calibration.

speed: diffusers' UNet2DConditionModel with the SD 1.5 configuration and random weights, exported like the
engine's CPU graphs (dynamo, opset 23) and quantized by `engines.quantize.quantize_unet`, calibrated on latents as
a stream makes them (encoded-looking N(0, 1) latents noised at the stream's two timesteps). UNet calls (batch 2)
are timed alternating fp32 / int8 on ONNX Runtime and OpenVINO; prints each round's ratio and the median.
`--prepare` only exports and quantizes (CPU-heavy, no timing), so the timing can run when the machine is quiet.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.tiny_figures import PRESET_SLOTS, sample_agreement  # noqa: E402
from engines.base import EngineShapes  # noqa: E402
from engines.loading import ModelSpec  # noqa: E402

SD15_UNET = dict(sample_size=64, cross_attention_dim=768)  # diffusers' defaults are the rest of SD 1.5's config
TIMESTEPS = (899, 299)  # a 2-step stream's UNet batch


def quality(frames: int, size: int = 256, threads: int = 2) -> dict:
    from engines.onnx_engine import OnnxRuntimeOptions, create_onnxruntime_engine
    from engines.quantize import CALIBRATION_CALLS, use_int8_unet

    shapes = EngineShapes(width=size, height=size, frame_batch=1, unet_batch=len(PRESET_SLOTS))
    with tempfile.TemporaryDirectory() as cache_root:
        options = OnnxRuntimeOptions(cache_root=Path(cache_root), check_in_background=False)
        spec = ModelSpec(model="tiny", vae="tiny")
        fp32 = create_onnxruntime_engine(spec, shapes, "cpu", threads, options)
        int8 = create_onnxruntime_engine(spec, shapes, "cpu", threads, options)
        use_int8_unet(int8, in_background=False)
        # scored after calibration (2 UNet calls a frame) and the buffer refill
        return sample_agreement(fp32, int8, "a watercolor painting", frames, CALIBRATION_CALLS // 2 + 2, size)


def load_unet(model: str) -> torch.nn.Module:
    """The UNet to time: `sd15` (SD 1.5's architecture, random weights) or `tiny` (the trained tiny model)."""
    if model == "tiny":
        from engines.loading import load_components

        return load_components(ModelSpec(model="tiny"), "cpu", torch.float32).unet.eval()
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(**SD15_UNET).eval()


def unet_graph(work: Path, size: int, model: str) -> tuple[Path, object, int]:
    """The UNet exported to work/unet.onnx (once), its GraphSpec and its embedding width."""
    from engines.onnx_export import CallAsModule, GraphSpec, TensorSpec, export_graph, example_inputs

    h = size // 8
    unet = load_unet(model)
    dim = int(unet.config.cross_attention_dim)
    spec = GraphSpec("unet", (TensorSpec("latents", (2, 4, h, h), torch.float32),
                              TensorSpec("timesteps", (2,), torch.int64),
                              TensorSpec("embeddings", (2, 77, dim), torch.float32)),
                     (TensorSpec("noise", (2, 4, h, h), torch.float32),))
    path = work / "unet.onnx"
    if not path.exists():
        module = CallAsModule(lambda x, t, e: unet(x, t, encoder_hidden_states=e).sample, [unet])
        from engines.onnx_engine import CPU_EXPORT

        export_graph(module, spec, example_inputs(spec, 0), path, CPU_EXPORT)
    return path, spec, dim


def calibration_calls(count: int, size: int, dim: int, seed: int = 1) -> list[dict[str, torch.Tensor]]:
    """UNet graph inputs by name (latents, timesteps, embeddings), as a 2-step stream makes them."""
    generator = torch.Generator().manual_seed(seed)
    h = size // 8
    embedding = torch.randn(1, 77, dim, generator=generator).expand(2, -1, -1)
    noise_scale = torch.tensor([0.95, 0.5]).view(2, 1, 1, 1)
    return [{"latents": torch.randn(1, 4, h, h, generator=generator).expand(2, -1, -1, -1)
             + noise_scale * torch.randn(2, 4, h, h, generator=generator),
             "timesteps": torch.tensor(TIMESTEPS), "embeddings": embedding} for _ in range(count)]


def speed(size: int, rounds: int, work: Path, prepare_only: bool, model: str, threads: int = 2,
          calls: int = 4) -> dict:
    from engines.quantize import quantize_unet

    work.mkdir(parents=True, exist_ok=True)
    fp32_path, spec, dim = unet_graph(work, size, model)
    int8_path = work / "unet-int8.onnx"
    if not int8_path.exists():
        quantize_unet(fp32_path, calibration_calls(calls, size, dim), int8_path)
    if prepare_only:
        return {"prepared": str(work)}
    feeds = {name: value.numpy() for name, value in calibration_calls(1, size, dim, seed=7)[0].items()}
    runs = runners(fp32_path, int8_path, threads)
    for run in runs.values():
        run(feeds)  # first calls allocate
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            started = time.perf_counter()
            run(feeds)
            seconds[name].append(time.perf_counter() - started)
    ratios = {f"{runtime} int8 / fp32": [a / b for a, b in zip(seconds[f"{runtime} fp32"], seconds[f"{runtime} int8"])]
              for runtime in ("ort", "ov")}
    ratios["ov int8 / ort fp32"] = [a / b for a, b in zip(seconds["ort fp32"], seconds["ov int8"])]
    return {"seconds": seconds, "speedup_per_round": ratios,
            "speedup_median": {name: statistics.median(values) for name, values in ratios.items()}}


def runners(fp32_path: Path, int8_path: Path, threads: int) -> dict:
    import onnxruntime
    import openvino

    from engines.onnx_engine import session_options
    from engines.openvino_engine import compile_options

    runs = {}
    for tag, path in (("fp32", fp32_path), ("int8", int8_path)):
        session = onnxruntime.InferenceSession(str(path), session_options(threads, False),
                                               providers=["CPUExecutionProvider"])
        runs[f"ort {tag}"] = lambda feeds, s=session: s.run(None, feeds)
        compiled = openvino.Core().compile_model(str(path), "CPU", compile_options("CPU", threads))
        request = compiled.create_infer_request()
        runs[f"ov {tag}"] = lambda feeds, r=request: r.infer(feeds)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("quality", "speed"))
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--unet", choices=("sd15", "tiny"), default="sd15", help="speed: which UNet")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "vcam-int8-bench")
    parser.add_argument("--prepare", action="store_true", help="speed: export and quantize only, no timing")
    args = parser.parse_args()
    torch.set_num_threads(2)
    result = quality(args.frames) if args.what == "quality" else speed(args.size, args.rounds, args.work, args.prepare,
                                                                          args.unet)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
