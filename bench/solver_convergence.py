"""Convergence of DDIM, DPM-Solver++ 2M and 3M on one still photo: a small reproduction of Lu et al.
(arXiv 2211.01095, fig. 1/4): error against a 200-step DDIM reference for 5..25 steps, txt2img and img2img.

    python bench/solver_convergence.py                        # the trained tiny model, 256x256, prints a table
    python bench/solver_convergence.py --json --plot docs/solver-convergence.png
    python bench/solver_convergence.py --model FOLDER --size 512 --guidance 7

Every run uses the core's own solver (`core.solvers`, the code the stream batch runs, proven equal to diffusers'
schedulers by tests/test_dpm_solver.py), one frame at a time, with full CFG and the same starting noise for every
solver and step count. img2img starts every run at the same timestep (strength 0.6 with step counts that are
multiples of 5 start at t = 599 on the trailing grid), so every run integrates the same ODE from the same point.

The error is the relative RMS difference of the final latents, ||x - x_ref|| / ||x_ref||, and the mean absolute
difference of the decoded pictures in [0, 1]; "within tolerance" is the first step count whose latent error is at
most --tolerance.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.config import StreamConfig  # noqa: E402
from core.schedule import Schedule, data_prediction  # noqa: E402
from core.solvers import SolverRows, dpm_solver_pp_update  # noqa: E402
from core.stream_batch import seeded_noise  # noqa: E402
from engines.base import Engine, EngineShapes  # noqa: E402
from engines.factory import create_engine  # noqa: E402
from engines.loading import ModelSpec  # noqa: E402

SOLVERS = {"DDIM": ("ddim", 1), "DPM-Solver++ 2M": ("dpmsolver++", 2), "DPM-Solver++ 3M": ("dpmsolver++", 3)}


def rows_of(solver: SolverRows, rows: slice) -> SolverRows:
    """The coefficients of some rows only (one slot of a one-frame schedule is one row)."""
    tensors = {f.name: getattr(solver, f.name)[rows] for f in fields(solver)
               if isinstance(getattr(solver, f.name), torch.Tensor)}
    return replace(solver, **tensors)


def solve(engine: Engine, config: StreamConfig, start: torch.Tensor | None, noise: torch.Tensor,
          embeddings: torch.Tensor) -> torch.Tensor:
    """One frame (1, C, h, w) through `config`'s solver, sequentially: img2img from clean latents `start`, or
    txt2img from `noise` (None). embeddings: (2, L, D), [negative, prompt] for full CFG."""
    schedule = Schedule.build(config, engine.noise_schedule, engine.device, engine.dtype)
    assert schedule.solver is not None
    x = noise if start is None else schedule.alpha_sqrt[:1] * start + schedule.beta_sqrt[:1] * noise
    history: list[torch.Tensor] = []
    for slot in range(schedule.steps):
        row = slice(slot, slot + 1)
        output = engine.predict_noise(torch.cat([x, x]), schedule.row_timesteps[row].repeat(2), embeddings)
        eps_u, eps_c = output.chunk(2)
        eps = eps_u + config.guidance_scale * (eps_c - eps_u)  # full CFG (epsilon models)
        denoised = data_prediction(eps, x, replace(schedule, alpha_sqrt=schedule.alpha_sqrt[row],
                                                   beta_sqrt=schedule.beta_sqrt[row]))
        x = dpm_solver_pp_update(x, denoised, history, rows_of(schedule.solver, row))
        history = [denoised, *history][: schedule.solver.history]
    return x


def photo(size: int) -> torch.Tensor:
    """scikit-image's astronaut photo, centre-cropped and resized: (1, 3, size, size) in [-1, 1]."""
    from skimage import data, transform

    image = data.astronaut().astype(np.float32) / 255.0  # (512, 512, 3)
    image = transform.resize(image, (size, size), anti_aliasing=True)
    return torch.from_numpy(image).permute(2, 0, 1)[None].float() * 2 - 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--vae", default=None, help="a TAESD folder or 'tiny'; default: the model's own VAE")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--prompt", default="pencil sketch")
    parser.add_argument("--negative-prompt", default="")
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--strength", type=float, default=0.6)
    parser.add_argument("--steps", default="5,10,15,20,25")
    parser.add_argument("--reference-steps", type=int, default=200)
    parser.add_argument("--tolerance", type=float, default=0.05, help="relative latent RMS error counted as converged")
    parser.add_argument("--seed", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--plot", default=None, help="write the convergence plot (PNG) here (needs matplotlib)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    steps = [int(s) for s in args.steps.split(",")]

    shapes = EngineShapes(width=args.size, height=args.size, frame_batch=1, unet_batch=2)
    engine = create_engine("torch", ModelSpec(model=args.model, vae=args.vae), shapes, device="cpu",
                           threads=args.threads)
    embeddings = engine.encode_prompt([args.negative_prompt, args.prompt])  # (2, L, D)
    latents = engine.encode_images(photo(args.size).to(engine.dtype))  # (1, C, h, w)
    noise = seeded_noise(tuple(latents.shape), args.seed, engine.device, engine.dtype)
    base = StreamConfig(width=args.size, height=args.size, guidance="full", guidance_scale=args.guidance,
                        seed=args.seed, strength=args.strength)

    def run(mode: str, scheduler: str, order: int, n: int) -> torch.Tensor:
        config = replace(base, mode=mode, scheduler=scheduler, solver_order=order, num_inference_steps=n)
        with torch.inference_mode():
            return solve(engine, config, latents if mode == "img2img" else None, noise, embeddings)

    def decoded(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return (engine.decode_latents(x).float().clamp(-1, 1) + 1) / 2

    report: dict = {"model": args.model, "size": args.size, "prompt": args.prompt, "guidance_scale": args.guidance,
                    "strength": args.strength, "reference": f"DDIM {args.reference_steps} steps",
                    "tolerance": args.tolerance, "steps": steps, "modes": {}}
    for mode in ("txt2img", "img2img"):
        reference = run(mode, "ddim", 1, args.reference_steps)
        ref_pixels = decoded(reference)
        table: dict = {}
        for name, (scheduler, order) in SOLVERS.items():
            rows = []
            for n in steps:
                x = run(mode, scheduler, order, n)
                latent_error = float((x - reference).norm() / reference.norm())
                pixel_error = float((decoded(x) - ref_pixels).abs().mean())
                rows.append({"steps": n, "latent_rel_rmse": round(latent_error, 5), "pixel_mae": round(pixel_error, 5)})
                print(f"{mode} {name} {n} steps: latent {latent_error:.4f}, pixels {pixel_error:.4f}", file=sys.stderr)
            within = next((r["steps"] for r in rows if r["latent_rel_rmse"] <= args.tolerance), None)
            table[name] = {"errors": rows, "steps_within_tolerance": within}
        report["modes"][mode] = table
    if args.plot:
        write_plot(report, Path(args.plot))
    print(json.dumps(report, indent=2) if args.json else markdown_table(report))
    return 0


def markdown_table(report: dict) -> str:
    """One table per mode: relative latent error per solver and step count, and the steps within tolerance."""
    lines = []
    for mode, table in report["modes"].items():
        lines.append(f"\n{mode} (vs {report['reference']}; latent rel. RMSE / pixel MAE)\n")
        lines.append("| solver | " + " | ".join(f"{n} steps" for n in report["steps"]) + f" | <= {report['tolerance']} at |")
        lines.append("| --- |" + " --- |" * (len(report["steps"]) + 1))
        for name, entry in table.items():
            cells = [f"{r['latent_rel_rmse']:.4f} / {r['pixel_mae']:.4f}" for r in entry["errors"]]
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {entry['steps_within_tolerance'] or '> max'} |")
    return "\n".join(lines)


def write_plot(report: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("solver_convergence: matplotlib is not installed; no plot written (pip install matplotlib)",
              file=sys.stderr)
        return
    figure, axes = plt.subplots(1, len(report["modes"]), figsize=(10, 4), sharey=True)
    for axis, (mode, table) in zip(np.atleast_1d(axes), report["modes"].items()):
        for name, entry in table.items():
            axis.semilogy([r["steps"] for r in entry["errors"]], [r["latent_rel_rmse"] for r in entry["errors"]],
                          marker="o", label=name)
        axis.axhline(report["tolerance"], color="gray", linestyle="--", linewidth=0.8)
        axis.set_title(f"{mode} ({report['model']}, CFG {report['guidance_scale']})")
        axis.set_xlabel("steps")
        axis.grid(True, which="both", alpha=0.3)
    np.atleast_1d(axes)[0].set_ylabel(f"relative latent error vs {report['reference']}")
    np.atleast_1d(axes)[0].legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


if __name__ == "__main__":
    raise SystemExit(main())
