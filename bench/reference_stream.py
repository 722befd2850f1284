"""The reference side of `bench/reference.py`: StreamDiffusion 0.1.1 img2img on frames from a file, as JSON.

Runs inside the reference's own virtual environment (torch, diffusers 0.24, streamdiffusion 0.1.1; no vcam), so it
imports nothing from vcam. It does what StreamDiffusion's own img2img example does per frame (its `__call__`:
preprocess, similarity filter, VAE encode, one batched UNet call, VAE decode; then the image back to uint8), with
two changes that CPU-only torch forces and that do not change the work: `__call__` times itself with CUDA events
and `torch.cuda.synchronize`, which a CPU build of torch lacks, so those are replaced by a wall clock; and the
TAESD is loaded from a local folder instead of the Hugging Face hub (as its wrapper does with `use_tiny_vae`).
And it flushes denormal floats to zero, as vcam does on every CPU thread: the random-weight benchmark models make
denormals that real weights rarely do, and without flushing they slow CPU math ~20x, which would measure the test
model rather than the two programs.

Prints one JSON object: frames, seconds, fps, cpu_seconds (this process, user + system), skipped.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


class WallClockEvent:
    """Stands in for `torch.cuda.Event(enable_timing=True)` on a CPU-only torch: elapsed_time in milliseconds."""

    def __init__(self, enable_timing: bool = False) -> None:
        self.seconds = 0.0

    def record(self, stream: object = None) -> None:
        self.seconds = time.perf_counter()

    def elapsed_time(self, end: "WallClockEvent") -> float:
        return (end.seconds - self.seconds) * 1000.0


def build_stream(args: argparse.Namespace):
    from diffusers import AutoencoderTiny, StableDiffusionPipeline
    from streamdiffusion import StreamDiffusion

    pipe = StableDiffusionPipeline.from_pretrained(
        args.model_dir, torch_dtype=torch.float32, safety_checker=None, feature_extractor=None,
        local_files_only=True).to(device="cpu", dtype=torch.float32)
    stream = StreamDiffusion(pipe, t_index_list=args.t_index_list, torch_dtype=torch.float32, width=args.width,
                             height=args.height, frame_buffer_size=1, cfg_type=args.guidance)
    if args.vae_dir:
        stream.vae = AutoencoderTiny.from_pretrained(args.vae_dir, torch_dtype=torch.float32, local_files_only=True)
    if args.ssf:
        stream.enable_similar_image_filter(args.ssf_threshold, args.ssf_max_skip)
    stream.prepare(prompt=args.prompt, num_inference_steps=args.num_inference_steps,
                   guidance_scale=args.guidance_scale, delta=args.delta, seed=args.seed)
    return stream


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(1, 3, H, W) in [-1, 1] -> (H, W, 3) uint8: StreamDiffusion's postprocess_image (denormalize, to numpy)."""
    pixels = (images / 2 + 0.5).clamp(0, 1)[0].permute(1, 2, 0).float().numpy()
    return (pixels * 255).round().astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--vae-dir", default="")
    parser.add_argument("--frames-file", required=True, help=".npy of (N, H, W, 3) uint8 RGB frames")
    parser.add_argument("--warmup", type=int, default=2, help="mid-grey frames run before timing, as vcam's warm-up")
    parser.add_argument("--width", type=int, required=True)
    parser.add_argument("--height", type=int, required=True)
    parser.add_argument("--t-index-list", type=lambda text: [int(i) for i in text.split(",")], required=True)
    parser.add_argument("--num-inference-steps", type=int, default=50)
    parser.add_argument("--guidance", default="none", choices=("none", "full", "self", "initialize"))
    parser.add_argument("--guidance-scale", type=float, default=1.2)
    parser.add_argument("--delta", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=2)
    parser.add_argument("--prompt", default="")
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--ssf", action="store_true")
    parser.add_argument("--ssf-threshold", type=float, default=0.98)
    parser.add_argument("--ssf-max-skip", type=int, default=10)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # before the first op, so the thread pool's workers copy it (see above)
    torch.cuda.Event = WallClockEvent
    torch.cuda.synchronize = lambda device=None: None
    stream = build_stream(args)
    frames = np.load(args.frames_file)  # (N, H, W, 3) uint8
    images = [torch.from_numpy(frame).permute(2, 0, 1)[None].float() / 255.0 for frame in frames]  # (1, 3, H, W)
    for _ in range(args.warmup):  # first calls allocate, and the rolling buffer fills
        to_uint8(stream(torch.full_like(images[0], 0.5)))
    cpu_start, start = time.process_time(), time.perf_counter()
    outputs, skipped, last = 0, 0, None
    for image in images:
        result = stream(image)
        skipped += result is last  # a skipped frame returns the previous result object itself
        last = result
        to_uint8(result)
        outputs += 1
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    print(json.dumps({"frames": outputs, "seconds": round(seconds, 3), "fps": round(outputs / seconds, 4),
                      "cpu_seconds": round(cpu_seconds, 3), "skipped": skipped, "threads": torch.get_num_threads(),
                      "torch": torch.__version__}))


if __name__ == "__main__":
    main()
