"""Command-line options shared by `vcam run` and `vcam bench`, so any setting can be reproduced from the shell.

Every option defaults to None ("not given"): the value then comes from the preset, and failing that from the
dataclass defaults. That ordering (defaults < preset < command line) is applied in `vcam.settings`.
"""
from __future__ import annotations

import argparse

from core.config import GUIDANCE_MODES


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.replace(" ", "").split(",") if part)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers such as 32,45, got {text!r}")
    if not values:
        raise argparse.ArgumentTypeError("expected at least one index, such as 32,45")
    return values


def add_stream_options(parser: argparse.ArgumentParser) -> None:
    """The options of the core issue, shared by run and bench."""
    g = parser.add_argument_group("model and engine")
    g.add_argument("--preset", help="preset name (see `vcam presets`) or a .toml file")
    g.add_argument("--model", help="'tiny', a diffusers folder, a .safetensors file, or a model id in the local HF cache")
    g.add_argument("--vae", help="a TAESD folder (tiny VAE) used instead of the model's VAE; 'none' keeps the full VAE")
    g.add_argument("--tokenizer", help="a CLIP tokenizer folder (vocab.json + merges.txt) for a single-file checkpoint")
    g.add_argument("--lora", action="append", help="a LoRA .safetensors fused at load time (repeatable)")
    g.add_argument("--lora-scale", type=float, help="weight of the fused LoRA (default 1.0)")
    g.add_argument("--engine", help="auto | torch | torch-compile | onnxruntime | tensorrt")
    g.add_argument("--device", help="auto | cpu | cuda | cuda:1 | mps")
    g.add_argument("--threads", type=int, help="CPU threads for the model (default: all cores)")

    g = parser.add_argument_group("several devices (see README 'Several devices')")
    g.add_argument("--devices", help="cpu:N (N CPU processes) | N | cuda:0,cuda:1: the UNet in stages over them")
    g.add_argument("--parallel", choices=("pipeline", "asyncdiff"), help="pipeline (exact) or asyncdiff (faster, approximate)")
    g.add_argument("--asyncdiff-warmup", type=int, help="AsyncDiff: exact calls after a start (default 2)")
    g.add_argument("--hosts", help="ADDR[:PORT] to wait on for stage workers started on other machines")

    g = parser.add_argument_group("stream")
    g.add_argument("--width", type=int, help="model input width in pixels (multiple of 8)")
    g.add_argument("--height", type=int, help="model input height in pixels (multiple of 8)")
    g.add_argument("--t-index-list", type=_int_list, help="denoising steps as indices of the 50-step grid, e.g. 32,45")
    g.add_argument("--strength", type=float, help="img2img strength in (0, 1]; with --steps, instead of --t-index-list")
    g.add_argument("--steps", type=int, help="number of denoising steps, with --strength")
    g.add_argument("--cfg", choices=GUIDANCE_MODES, help="residual classifier-free guidance mode")
    g.add_argument("--guidance", type=float, help="guidance scale (RCFG does nothing at <= 1)")
    g.add_argument("--delta", type=float, help="RCFG virtual residual noise weight")
    g.add_argument("--seed", type=int, help="seed of the fixed stream noise")
    g.add_argument("--frame-buffer", type=int, help="frames per UNet call (F)")
    g.add_argument("--prompt", help="prompt text (overrides the preset's first prompt)")
    g.add_argument("--negative-prompt", help="negative prompt used by RCFG full / initialize")
    g.add_argument("--txt2img", action="store_true", default=None, help="ignore the camera picture: text-to-image stream")

    g = parser.add_argument_group("similarity filter")
    g.add_argument("--ssf-threshold", type=float, help="cosine similarity above which frames may be skipped")
    g.add_argument("--ssf-max-skip", type=int, help="at most this many skipped frames in a row")
    g.add_argument("--no-ssf", action="store_true", default=None, help="process every frame")

    g = parser.add_argument_group("input and output")
    g.add_argument("--source", help="camera:0 | camera:/dev/video2 | a video or image file | synthetic | synthetic:static")
    g.add_argument("--sink", help="auto | vcam | window | mjpeg[:port] | null | an output file such as out.mp4")
    g.add_argument("--frames", type=int, help="stop after this many output frames")
    g.add_argument("--output-size", help="virtual camera size WIDTHxHEIGHT (default 1280x720)")
    g.add_argument("--output-fps", type=float, help="virtual camera frame rate (default 30)")
    g.add_argument("--fit", choices=("crop", "letterbox"), help="how the picture fits the output (never stretched)")
    g.add_argument("--mirror", action="store_true", default=None, help="mirror the output horizontally")
