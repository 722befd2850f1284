"""Specs of the tiny model's training script (`bench/train_tiny.py`): deterministic from its seed, resumable at
every phase, and its UNet crops take the same place of a row's photo and style. Runs are shrunk to a few steps
(`--processes 1`, small bank) so the whole recipe runs in seconds; the real run is the same code with its defaults.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bench.train_tiny import build_parser, latent_crops

ROOT = Path(__file__).resolve().parents[1]
SHRUNK = ["--processes", "1", "--ae-steps", "3", "--ae-batch", "2", "--bank", "8", "--unet-steps", "3",
          "--unet-batch", "4", "--translation-rows", "2", "--save-every", "2", "--no-figures",
          "--translation-gradient-weight", "1"]  # every term of the loss runs (the gradient term is off by default)

pytestmark = pytest.mark.timeout(600)


def train(out: Path, checkpoint: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "bench" / "train_tiny.py"), "--out", str(out), "--checkpoint",
                           str(checkpoint), *SHRUNK, *extra], capture_output=True, text=True, cwd=ROOT, timeout=500)


WEIGHT_FILES = {"vae": "diffusion_pytorch_model.safetensors", "unet": "diffusion_pytorch_model.safetensors",
                "text_encoder": "model.safetensors"}  # diffusers' and transformers' names in a model folder


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return {f"{part}.{name}": tensor for part, file in WEIGHT_FILES.items()
            for name, tensor in load_file(folder / part / file).items()}


def test_a_run_resumed_after_each_phase_writes_the_same_weights_as_one_run(tmp_path: Path):
    straight = train(tmp_path / "straight", tmp_path / "straight.ckpt")
    assert straight.returncode == 0, straight.stderr[-2000:]
    assert "final losses" in straight.stdout and "trained in" in straight.stdout
    for phase in ("autoencoder", "bank"):  # stopped after a phase, then started again on the same checkpoint
        stopped = train(tmp_path / "phased", tmp_path / "phased.ckpt", "--stop-after", phase)
        assert stopped.returncode == 0 and not (tmp_path / "phased").exists(), stopped.stderr[-2000:]
    resumed = train(tmp_path / "phased", tmp_path / "phased.ckpt")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    first, second = weights(tmp_path / "straight"), weights(tmp_path / "phased")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[name], second[name]) for name in first)


def test_a_checkpoint_of_another_seed_is_refused_in_one_line(tmp_path: Path):
    checkpoint = tmp_path / "ck.pt"
    assert train(tmp_path / "out", checkpoint, "--stop-after", "autoencoder").returncode == 0
    refused = train(tmp_path / "out", checkpoint, "--seed", "1")
    assert refused.returncode == 2
    assert "was made with seed 0; pass that seed or a new --checkpoint" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_an_unknown_prompt_exempt_from_the_gradient_term_is_refused_in_one_line(tmp_path: Path):
    refused = train(tmp_path / "out", tmp_path / "ck.pt", "--gradient-exempt-prompts", "neon")
    assert refused.returncode == 2
    assert "--gradient-exempt-prompts: neon is not one of sepia photograph, pencil sketch, neon glow" in refused.stderr
    assert "Traceback" not in refused.stderr and not (tmp_path / "ck.pt").exists()


def test_a_crop_takes_the_same_place_of_every_tensor_of_a_row():
    photo = torch.arange(3 * 4 * 16 * 16, dtype=torch.float32).reshape(3, 4, 16, 16)
    style = -photo
    photo_crops, style_crops = latent_crops([photo, style], 8, torch.Generator().manual_seed(1))
    assert photo_crops.shape == (3, 4, 8, 8)
    assert torch.equal(style_crops, -photo_crops)
    for row in range(3):  # each crop is a contiguous window of its own row
        top, left = divmod(int(photo_crops[row, 0, 0, 0].item()) - row * 4 * 256, 16)
        assert torch.equal(photo_crops[row], photo[row, :, top:top + 8, left:left + 8])


def test_help_says_what_every_option_does_its_default_and_that_it_replaces_the_shipped_weights():
    parser = build_parser()
    assert "About 30 minutes" in parser.description
    assert "writes the shipped weights (engines/tiny/weights)" in parser.description
    for action in parser._actions:
        if action.dest == "help":
            continue
        assert action.help and len(action.help.split()) > 2, f"{action.option_strings[0]} has no help text"
        assert action.default is not None, f"{action.option_strings[0]} has no default to show"
    shown = subprocess.run([sys.executable, str(ROOT / "bench" / "train_tiny.py"), "--help"], capture_output=True,
                           text=True, cwd=ROOT, timeout=120)
    assert shown.returncode == 0 and shown.stdout.count("(default:") == len(parser._actions) - 1, shown.stdout
