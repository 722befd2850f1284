"""vcam against the reference implementation (StreamDiffusion 0.1.1 on torch), same model, settings, frames, threads.

    python bench/reference.py --model sd21-shape --vae taesd-shape --width 512 --height 512 --t-index-list 25 \
        --frames 6 --pairs 3 --engine torch

The reference runs in its own virtual environment, created on first use (`--venv`, default in the user cache) with
the versions StreamDiffusion 0.1.1 was released against (diffusers 0.24 and the huggingface_hub / transformers that
still work with it) and the same torch release as vcam's, so a difference is the two programs, not two torches.
Both sides load the same diffusers folder, get the same frames (the `--source` frames written once to a .npy file;
vcam's bench generates the identical frames itself, they are a pure function of the source spec and size), the same
t_index_list, guidance, prompt and thread count, and warm up before timing (vcam: its own warm-up; the reference:
as many mid-grey frames as vcam's). Every run is a fresh process; the sides alternate A-B, B-A so a steady drift
of machine speed cancels; each pair's ratio (vcam fps / reference fps) and their median are printed. A ratio holds
on any machine; absolute frame rates do not.

The reference side is `bench/reference_stream.py` (what it adapts for a CPU-only torch is said there).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "reference_stream.py"
# StreamDiffusion 0.1.1 pins diffusers 0.24; that diffusers imports `cached_download`, gone from huggingface_hub
# 0.26, and transformers 4.46 is the last that accepts such a hub. torchvision (which its image_utils imports) is not
# installed: the CUDA build on PyPI cannot load its operators next to a CPU torch; the worker does not need it.
REFERENCE_REQUIREMENTS = (
    "streamdiffusion==0.1.1", "diffusers==0.24.0", "huggingface_hub==0.25.2", "transformers==4.46.3",
    "accelerate==1.15.0", "numpy==1.26.4", f"torch=={torch.__version__.split('+')[0]}",
)


def default_venv() -> Path:
    import platformdirs

    return Path(platformdirs.user_cache_dir("vcam")) / "reference-venv"


def ensure_reference_venv(venv: Path) -> Path:
    """The reference venv's python, creating the venv (or re-installing when the pins changed)."""
    python = venv / "bin" / "python"
    marker = venv / "vcam-requirements.txt"
    wanted = "\n".join(REFERENCE_REQUIREMENTS) + "\n"
    if python.is_file() and marker.is_file() and marker.read_text() == wanted:
        return python
    print(f"reference: creating its virtual environment in {venv} (once; pip downloads ~1 GB)", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", *REFERENCE_REQUIREMENTS], check=True)
    marker.write_text(wanted)
    return python


def write_frames(source: str, width: int, height: int, count: int, path: Path) -> None:
    """`count` frames of `source` at width x height (what `vcam bench --source` reads) as (N, H, W, 3) uint8 RGB."""
    from vcam.sources import SourceConfig, open_source

    frames_source = open_source(source, SourceConfig(width=width, height=height, live=False))
    try:
        frames = [frames_source.read() for _ in range(count)]
    finally:
        frames_source.close()
    np.save(path, np.stack(frames))


def resolve_folders(model: str, vae: str | None) -> tuple[Path, Path | None]:
    """The diffusers folder (and TAESD folder) both sides load, resolved by vcam's own loader."""
    from engines.loading import ModelSpec, resolve_model

    resolved = resolve_model(ModelSpec(model=model, vae=vae))
    if resolved.kind != "folder":
        sys.exit("reference: pass a diffusers folder (or a built-in model); StreamDiffusion loads folders")
    if resolved.vae_path is not None and not resolved.vae_is_tiny:
        sys.exit("reference: --vae must be a TAESD (what StreamDiffusion's use_tiny_vae loads)")
    return resolved.path, resolved.vae_path


def run_json(command: list[str]) -> dict:
    """Run one side in a fresh process and return the JSON object it prints last."""
    # Both sides wait at OpenMP barriers the way vcam's CLI sets it (`vcam.cli.wait_without_spinning`), so the
    # ratio compares the two programs, not two wait policies (which differ most on a busy machine).
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env)
    if done.returncode != 0:
        sys.exit(f"reference: {command[0]} {' '.join(command[1:4])}... failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def vcam_command(args: argparse.Namespace) -> list[str]:
    command = [sys.executable, "-m", "vcam.cli", "bench", "--json", "--no-progress", "--no-model-only",
               "--model", args.model, "--engine", args.engine, "--device", "cpu", "--threads", str(args.threads),
               "--width", str(args.width), "--height", str(args.height), "--t-index-list", args.t_index_list,
               "--guidance", args.guidance, "--guidance-scale", str(args.guidance_scale), "--delta", str(args.delta),
               "--seed", str(args.seed), "--prompt", args.prompt, "--source", args.source,
               "--camera-width", str(args.width), "--camera-height", str(args.height), "--sink", "null",
               "--output-size", f"{args.width}x{args.height}", "--frames", str(args.frames),
               "--ssf" if args.ssf else "--no-ssf", "--ssf-threshold", str(args.ssf_threshold),
               "--ssf-max-skip", str(args.ssf_max_skip), "--precision", args.precision]
    return command + (["--vae", args.vae] if args.vae else [])


def reference_command(args: argparse.Namespace, python: Path, model_dir: Path, vae_dir: Path | None,
                      frames_file: Path) -> list[str]:
    command = [str(python), str(WORKER), "--model-dir", str(model_dir), "--frames-file", str(frames_file),
               "--warmup", str(len(args.t_index_list.split(","))), "--width", str(args.width),
               "--height", str(args.height), "--t-index-list", args.t_index_list, "--guidance", args.guidance,
               "--guidance-scale", str(args.guidance_scale), "--delta", str(args.delta), "--seed", str(args.seed),
               "--prompt", args.prompt, "--threads", str(args.threads), "--ssf-threshold", str(args.ssf_threshold),
               "--ssf-max-skip", str(args.ssf_max_skip)]
    return command + (["--vae-dir", str(vae_dir)] if vae_dir else []) + (["--ssf"] if args.ssf else [])


def build_parser(description: str) -> argparse.ArgumentParser:
    """The options both sides share (also `bench/still_scene.py`'s)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", default="tiny-random", help="a built-in model name or a diffusers folder")
    parser.add_argument("--vae", default=None, help="a TAESD both sides use instead of the model's VAE")
    parser.add_argument("--engine", default="torch", help="vcam's engine (the reference always runs torch)")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "int8"),
                        help="vcam's UNet precision, vcam's default auto (bf16 on OpenVINO where the CPU has it) "
                             "unless given (int8: run one vcam bench with it first, so the INT8 UNet is calibrated "
                             "and cached; the reference always runs fp32)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--t-index-list", default="32,45")
    parser.add_argument("--guidance", default="none", choices=("none", "full", "self", "initialize"))
    parser.add_argument("--guidance-scale", type=float, default=1.2)
    parser.add_argument("--delta", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=2)
    parser.add_argument("--prompt", default="oil painting portrait")
    parser.add_argument("--source", default="sample:coffee", help="vcam's --source form; a sample or synthetic")
    parser.add_argument("--frames", type=int, default=20, help="timed frames per run")
    parser.add_argument("--pairs", type=int, default=3, help="runs of each side, alternated")
    parser.add_argument("--ssf", action="store_true", help="the similarity filter on, on both sides")
    parser.add_argument("--ssf-threshold", type=float, default=0.98)
    parser.add_argument("--ssf-max-skip", type=int, default=10)
    parser.add_argument("--venv", type=Path, default=None, help="the reference's virtual environment")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object")
    return parser


def compare(args: argparse.Namespace) -> dict:
    """Run the pairs; returns {"pairs": [{"vcam": {...}, "reference": {...}, "ratio": r}], "median_ratio": m}."""
    python = ensure_reference_venv(args.venv or default_venv())
    model_dir, vae_dir = resolve_folders(args.model, args.vae)
    pairs = []
    with tempfile.TemporaryDirectory(prefix="vcam-reference-") as tmp:
        frames_file = Path(tmp) / "frames.npy"
        write_frames(args.source, args.width, args.height, args.frames, frames_file)
        sides = {"vcam": vcam_command(args), "reference": reference_command(args, python, model_dir, vae_dir,
                                                                            frames_file)}
        for index in range(args.pairs):
            order = ("reference", "vcam") if index % 2 == 0 else ("vcam", "reference")
            results = {side: run_json(sides[side]) for side in order}
            ratio = results["vcam"]["fps"] / results["reference"]["fps"]
            pairs.append({**results, "ratio": round(ratio, 3)})
            print(f"pair {index + 1}: vcam {results['vcam']['fps']:.4g} fps, reference "
                  f"{results['reference']['fps']:.4g} fps, ratio {ratio:.3f}", file=sys.stderr, flush=True)
    median = statistics.median(pair["ratio"] for pair in pairs)
    print(f"median ratio (vcam / reference): {median:.3f} over {len(pairs)} pairs", file=sys.stderr)
    return {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "pairs": pairs, "median_ratio": round(median, 3)}


def main() -> None:
    args = build_parser(__doc__.splitlines()[0]).parse_args()
    report = compare(args)
    if args.json:
        print(json.dumps(report))


if __name__ == "__main__":
    main()
