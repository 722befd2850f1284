"""The stream batch with DPM-Solver++ against a plain per-frame diffusers loop, same machine, one run: fps ratio.

    python bench/solver_fps.py                                  # tiny model, 8 steps, strength 0.5, 2M, full CFG 3
    python bench/solver_fps.py --model FOLDER --size 512 --steps 10 --strength 0.6 --guidance 7 --frames 30

vcam: `vcam bench` (`vcam.bench.run_bench`: synthetic source -> stream -> null sink, the filter off) with
scheduler dpmsolver++. Baseline: diffusers' StableDiffusionImg2ImgPipeline, one frame per call, with
DPMSolverMultistepScheduler configured as the stream's solver (trailing spacing, same order, Karras setting and
final-step rule), the same model components (loaded once by `engines.loading`), size, strength, steps, guidance
scale and negative prompt. The baseline gets its prompt embeddings precomputed (its best case: no text encoder per
frame). Both see a moving picture, so the similarity filter could not help even if it were on.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def stream_fps(args: argparse.Namespace) -> tuple[dict, object]:
    """`vcam bench` on the solver settings: (its JSON fields, the ModelSpec it loaded)."""
    from vcam.bench import run_bench
    from vcam.cli import build_parser
    from vcam.settings import resolve_settings

    argv = ["bench", "--model", args.model, "--width", str(args.size), "--height", str(args.size), "--no-ssf",
            "--frames", str(args.frames), "--engine", "torch", "--device", "cpu", "--cfg", "full",
            "--guidance", str(args.guidance), "--negative-prompt", args.negative_prompt, "--prompt", args.prompt]
    if args.threads:
        argv += ["--threads", str(args.threads)]
    settings = resolve_settings(build_parser().parse_args(argv))
    stream = replace(settings.stream, scheduler="dpmsolver++", num_inference_steps=args.steps,
                     strength=args.strength, solver_order=args.order)  # until --scheduler is a CLI option
    settings = replace(settings, stream=stream)
    return run_bench(settings, progress=False).fields, settings.model


def diffusers_fps(args: argparse.Namespace, model_spec) -> dict:
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionImg2ImgPipeline

    from engines.loading import load_components

    parts = load_components(model_spec, "cpu", torch.float32)
    noise = parts.noise_schedule
    scheduler = DPMSolverMultistepScheduler(
        num_train_timesteps=noise.num_train_timesteps, beta_start=noise.beta_start, beta_end=noise.beta_end,
        beta_schedule=noise.beta_schedule, prediction_type=noise.prediction_type, timestep_spacing="trailing",
        algorithm_type="dpmsolver++", solver_order=args.order, lower_order_final=True, final_sigmas_type="zero",
    )
    pipe = StableDiffusionImg2ImgPipeline(vae=parts.vae, text_encoder=parts.text_encoder, tokenizer=parts.tokenizer,
                                          unet=parts.unet, scheduler=scheduler, safety_checker=None,
                                          feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    cond, uncond = pipe.encode_prompt(args.prompt, "cpu", 1, True, args.negative_prompt)
    base = torch.rand(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))

    def frame(i: int) -> None:
        image = torch.roll(base, shifts=(i * 3, i * 2), dims=(2, 3))  # a moving picture, (1, 3, H, W) in [0, 1]
        pipe(prompt_embeds=cond, negative_prompt_embeds=uncond, image=image, strength=args.strength,
             num_inference_steps=args.steps, guidance_scale=args.guidance, output_type="pt",
             generator=torch.Generator().manual_seed(i))

    with torch.inference_mode():
        frame(0)  # allocate outside the timed run, as vcam bench warms up
        start = time.perf_counter()
        for i in range(args.frames):
            frame(i + 1)
        seconds = time.perf_counter() - start
    return {"frames": args.frames, "seconds": round(seconds, 3), "fps": round(args.frames / seconds, 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--strength", type=float, default=0.5)
    parser.add_argument("--order", type=int, default=2)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--prompt", default="pencil sketch")
    parser.add_argument("--negative-prompt", default="")
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    ours, model_spec = stream_fps(args)
    plain = diffusers_fps(args, model_spec)
    print(json.dumps({
        "settings": {k: getattr(args, k) for k in ("model", "size", "steps", "strength", "order", "guidance")},
        "vcam_stream": {k: ours[k] for k in ("fps", "frames", "seconds", "unet_batch", "steps")},
        "diffusers_per_frame": plain,
        "fps_ratio": round(ours["fps"] / plain["fps"], 3) if plain["fps"] else None,
    }, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
