"""`sd15-shape`, `sd21-shape`, `taesd-shape`: random weights in the real architectures, for benchmarks at real size.

The tiny model (5.9M parameters) says nothing about what a real model costs: its UNet call is milliseconds where
SD 1.5's is seconds, so every overhead looks large and every engine looks alike. No real weights can be downloaded
where vcam is developed, but speed does not depend on the values of the weights (apart from denormals, which
every CPU engine flushes), only on the shapes. So these are the real SD 1.5 and SD 2.1-base / sd-turbo UNets,
CLIP text encoders and VAEs (and the real TAESD, for `--vae taesd-shape`), with seeded random weights, stored as
fp32 safetensors (as the real downloads are) in an ordinary diffusers folder, built once into the user cache and
loaded through the normal loading code like any downloaded model. Their pictures are noise: never judge quality
on them.

Architecture numbers are those of the published configs: runwayml/stable-diffusion-v1-5 and
stabilityai/stable-diffusion-2-1-base (`unet/config.json`, `text_encoder/config.json`, `vae/config.json`), and
madebyollin/taesd (diffusers' `AutoencoderTiny` defaults).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from engines.testmodel import (BOS_TOKEN, EOS_TOKEN, MAX_TOKENS, _calibrate_taesd, _seeded, _write_model_index,
                               _write_scheduler, _write_tokenizer, build_once, default_cache_root)

SHAPE_MODEL_VERSION = "shape-v1"  # bump when an architecture below changes
SHAPE_VAE = "taesd-shape"  # the real TAESD architecture with random weights, for `--vae`
CLIP_VOCAB_SIZE = 49408  # the real token embedding table (the shipped tokenizer uses its first ids only)


@dataclass(frozen=True)
class ShapeModel:
    """One real architecture: the UNet's and the text encoder's constructor arguments that differ between them."""

    unet: dict[str, Any] = field(default_factory=dict)
    text_encoder: dict[str, Any] = field(default_factory=dict)


# Shared by SD 1.x and 2.x: four resolution levels, two ResNet layers per level, cross-attention in the first three.
SD_UNET = {
    "sample_size": 64,  # 512x512 images
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    "norm_num_groups": 32,
}

SHAPE_MODELS: dict[str, ShapeModel] = {
    # SD 1.5: CLIP ViT-L/14 text encoder (768 wide, 12 layers), 8 attention heads everywhere: 859.5M UNet parameters.
    "sd15-shape": ShapeModel(
        unet={**SD_UNET, "cross_attention_dim": 768, "attention_head_dim": 8},
        text_encoder={"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                      "num_attention_heads": 12, "projection_dim": 768, "hidden_act": "quick_gelu"},
    ),
    # SD 2.1-base (and sd-turbo, its distillation): OpenCLIP ViT-H text encoder (1024 wide, 23 of its 24 layers),
    # 64-channel heads (5, 10, 20, 20 per level), linear projections in the transformers: 865.9M UNet parameters.
    "sd21-shape": ShapeModel(
        unet={**SD_UNET, "cross_attention_dim": 1024, "attention_head_dim": (5, 10, 20, 20),
              "use_linear_projection": True},
        text_encoder={"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 23,
                      "num_attention_heads": 16, "projection_dim": 512, "hidden_act": "gelu"},
    ),
}


def shape_unet(name: str) -> torch.nn.Module:
    """The UNet of `name` with freshly initialised weights (pass a `torch.device("meta")` context to only count)."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**SHAPE_MODELS[name].unet)


def _write_text_encoder(directory: Path, model: ShapeModel, seed: int, vocab: dict[str, int]) -> None:
    from transformers import CLIPTextConfig, CLIPTextModel

    _seeded(seed, 3)
    config = CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE, max_position_embeddings=MAX_TOKENS, bos_token_id=vocab[BOS_TOKEN],
        eos_token_id=vocab[EOS_TOKEN], pad_token_id=vocab[EOS_TOKEN], **model.text_encoder)
    CLIPTextModel(config).save_pretrained(directory, safe_serialization=True)


def _write_vae(directory: Path, seed: int) -> None:
    """SD's AutoencoderKL (shared by 1.x and 2.x): 83.7M parameters."""
    from diffusers import AutoencoderKL

    _seeded(seed, 2)
    AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
        latent_channels=4, norm_num_groups=32, sample_size=512, scaling_factor=0.18215,
    ).save_pretrained(directory, safe_serialization=True)


def write_shape_model(directory: Path, name: str, seed: int = 0) -> Path:
    """Write the random-weight diffusers folder of `name` (one of SHAPE_MODELS) and return it."""
    model = SHAPE_MODELS[name]
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _write_model_index(directory)
    vocab = _write_tokenizer(directory / "tokenizer")
    _write_text_encoder(directory / "text_encoder", model, seed, vocab)
    _seeded(seed, 1)
    shape_unet(name).save_pretrained(directory / "unet", safe_serialization=True)
    _write_vae(directory / "vae", seed)
    _write_scheduler(directory / "scheduler")
    return directory


def write_shape_taesd(directory: Path, seed: int = 0) -> Path:
    """Write TAESD's real architecture (diffusers' AutoencoderTiny defaults, 2.4M parameters), calibrated so its
    latents and pixels have SD-like ranges (see engines.testmodel), and return the folder."""
    from diffusers import AutoencoderTiny

    _seeded(seed, 4)
    taesd = AutoencoderTiny()
    _calibrate_taesd(taesd, seed)
    taesd.save_pretrained(directory, safe_serialization=True)
    return Path(directory)


def ensure_shape_model(name: str, cache_root: Path | None = None) -> Path:
    """The folder of `name` (a SHAPE_MODELS name or SHAPE_VAE), built into the user cache on first use.

    Building SD 1.5's is about 4.3 GB written and a minute of CPU; later runs reuse it."""
    root = (Path(cache_root) if cache_root is not None else default_cache_root()) / SHAPE_MODEL_VERSION
    target = root / name
    if name == SHAPE_VAE:
        build_once(target, write_shape_taesd)
    else:
        build_once(target, lambda staging: write_shape_model(staging, name))
    return target
