"""A small random-weight Stable Diffusion of the real architecture, written as an ordinary diffusers folder.

No weights can be downloaded where vcam is developed and tested, yet every code path (offline loading,
engines, the stream-batch core, the demo, benchmarks) must run against something shaped like SD 1.5. This
module writes such a model from a seed: same seed -> byte-identical safetensors, so tests and engine caches
are reproducible. The output is noise-like, but finite and non-degenerate, which is all the plumbing needs.
This is `--model tiny-random`; `--model tiny` is the trained model of the same family (`engines.tiny`).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

TINY_MODEL_VERSION = "tiny-v2"  # bump when the architecture or the tokenizer below changes
SHIPPED_TOKENIZER = Path(__file__).resolve().parent / "configs" / "tiny" / "tokenizer"  # CLIP BPE, 914 tokens
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
MAX_TOKENS = 77


@dataclass(frozen=True)
class TinyModelPaths:
    """Where the tiny model lives: an SD-style diffusers folder and a TAESD (AutoencoderTiny) folder."""

    model_dir: Path
    taesd_dir: Path


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _write_tokenizer(directory: Path) -> dict[str, int]:
    """Copy the shipped CLIP tokenizer (a byte-level BPE with merges learned from style-prompt words, so real
    prompts become short subword sequences) and return its vocabulary."""
    shutil.copytree(SHIPPED_TOKENIZER, directory, dirs_exist_ok=True)
    return json.loads((directory / "vocab.json").read_text(encoding="utf-8"))


def _seeded(seed: int, component: int) -> None:
    """Seed per component so each one's weights do not depend on the order the others were built in."""
    torch.manual_seed(seed * 1000 + component)


def _write_unet(directory: Path, seed: int) -> None:
    from diffusers import UNet2DConditionModel

    _seeded(seed, 1)
    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        block_out_channels=(64, 128, 128),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=128,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    unet.save_pretrained(directory, safe_serialization=True)


def _write_vae(directory: Path, seed: int) -> None:
    from diffusers import AutoencoderKL

    _seeded(seed, 2)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(32, 32, 64, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=256,
        scaling_factor=0.18215,
    )
    vae.save_pretrained(directory, safe_serialization=True)


def _write_text_encoder(directory: Path, seed: int, vocab: dict[str, int]) -> None:
    from transformers import CLIPTextConfig, CLIPTextModel

    _seeded(seed, 3)
    config = CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=MAX_TOKENS,
        projection_dim=128,
        bos_token_id=vocab[BOS_TOKEN],
        eos_token_id=vocab[EOS_TOKEN],
        pad_token_id=vocab[EOS_TOKEN],
    )
    CLIPTextModel(config).save_pretrained(directory, safe_serialization=True)


def _write_scheduler(directory: Path) -> None:
    _write_json(
        directory / "scheduler_config.json",
        {
            "_class_name": "LCMScheduler",
            "num_train_timesteps": 1000,
            "beta_start": 0.00085,
            "beta_end": 0.012,
            "beta_schedule": "scaled_linear",
            "prediction_type": "epsilon",
            "set_alpha_to_one": True,
            "steps_offset": 1,
            "clip_sample": False,
            "timestep_spacing": "leading",
        },
    )


def _write_model_index(directory: Path) -> None:
    _write_json(
        directory / "model_index.json",
        {
            "_class_name": "StableDiffusionPipeline",
            "feature_extractor": [None, None],
            "requires_safety_checker": False,
            "safety_checker": [None, None],
            "scheduler": ["diffusers", "LCMScheduler"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
        },
    )


def write_test_model(directory: Path, seed: int = 0) -> Path:
    """Write a random-weight SD 1.x-architecture diffusers folder (256x256 images, 32x32 latents) and return it."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _write_model_index(directory)
    vocab = _write_tokenizer(directory / "tokenizer")
    _write_text_encoder(directory / "text_encoder", seed, vocab)
    _write_unet(directory / "unet", seed)
    _write_vae(directory / "vae", seed)
    _write_scheduler(directory / "scheduler")
    return directory


def write_test_taesd(directory: Path, seed: int = 0) -> Path:
    """Write a random-weight TAESD (AutoencoderTiny, 4 latent channels, scale factor 8) folder and return it."""
    from diffusers import AutoencoderTiny

    directory = Path(directory)
    _seeded(seed, 4)
    taesd = AutoencoderTiny(
        encoder_block_out_channels=(16, 16, 16, 16),
        decoder_block_out_channels=(16, 16, 16, 16),
        num_encoder_blocks=(1, 1, 1, 1),
        num_decoder_blocks=(1, 1, 1, 1),
        latent_channels=4,
    )
    _calibrate_taesd(taesd, seed)
    taesd.save_pretrained(directory, safe_serialization=True)
    return directory


def _rescale_last_conv(module: torch.nn.Module, outputs: torch.Tensor, mean: float, std: float) -> None:
    """Make the last conv's per-channel output have `mean` / `std` over `outputs` (that conv's current outputs)."""
    conv = [m for m in module.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    got_mean = outputs.mean(dim=(0, 2, 3))  # (C,)
    got_std = outputs.std(dim=(0, 2, 3)).clamp_min(1e-6)  # (C,)
    gain = std / got_std
    with torch.no_grad():
        conv.weight.mul_(gain[:, None, None, None])
        bias = conv.bias if conv.bias is not None else torch.zeros_like(gain)
        new_bias = (bias - got_mean) * gain + mean
        if conv.bias is None:
            conv.bias = torch.nn.Parameter(new_bias)
        else:
            conv.bias.copy_(new_bias)


def _calibrate_taesd(taesd: torch.nn.Module, seed: int) -> None:
    """Random TAESD weights saturate (the decoder gave -1 everywhere: a black demo). Rescale the last conv of the
    encoder to SD-like latents (mean 0, std 1) and of the decoder to mid-range pixels, deterministically, so the
    tiny model's pictures move with their input like a real one's do."""
    generator = torch.Generator().manual_seed(seed * 1000 + 5)
    images = torch.rand(4, 3, 64, 64, generator=generator) * 2 - 1  # (4, 3, 64, 64) in [-1, 1]
    latents = torch.randn(4, 4, 8, 8, generator=generator)  # (4, 4, 8, 8)
    with torch.no_grad():
        _rescale_last_conv(taesd.encoder, taesd.encoder(images), mean=0.0, std=1.0)
        raw = (taesd.decoder(latents) + 1) / 2  # the decoder's own [0, 1] output before its x*2-1
        _rescale_last_conv(taesd.decoder, raw, mean=0.5, std=0.2)


def default_cache_root() -> Path:
    """The per-user cache where built models live (`platformdirs.user_cache_dir("vcam")/models`)."""
    import platformdirs

    return Path(platformdirs.user_cache_dir("vcam")) / "models"


def build_once(target: Path, write: Callable[[Path], None]) -> None:
    """Run `write(staging)` and rename the staging folder to `target`, unless `target` already exists.

    It is written to a temporary sibling folder and renamed into place, so a crash or a concurrent build never
    leaves a half-written model where a later run would trust it.
    """
    if target.is_dir():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        write(staging)
        try:
            os.rename(staging, target)
        except OSError:
            if not target.is_dir():  # not a lost race with another builder: a real failure
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def ensure_tiny_model(cache_root: Path | None = None) -> TinyModelPaths:
    """Build the random model once into the user cache and reuse it afterwards; `--model tiny-random` loads it."""
    root = Path(cache_root) if cache_root is not None else default_cache_root()
    target = root / TINY_MODEL_VERSION
    paths = TinyModelPaths(model_dir=target / "model", taesd_dir=target / "taesd")

    def write(staging: Path) -> None:
        write_test_model(staging / "model")
        write_test_taesd(staging / "taesd")

    build_once(target, write)
    return paths
