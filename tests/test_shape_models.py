"""The real-size benchmark models: the published SD 1.5 / SD 2.1 / TAESD architectures, built-in names that load."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from engines.loading import ModelSpec, resolve_model
from engines.shape_models import SHAPE_MODELS, SHAPE_VAE, ensure_shape_model, shape_unet

pytestmark = pytest.mark.timeout(300)


@pytest.mark.parametrize("name, parameters", [("sd15-shape", 859_520_964), ("sd21-shape", 865_910_724)])
def test_unets_have_the_published_parameter_counts(name: str, parameters: int) -> None:
    # runwayml/stable-diffusion-v1-5 and stabilityai/stable-diffusion-2-1-base: the same count means the same layers
    with torch.device("meta"):  # shapes only: nothing is allocated
        unet = shape_unet(name)
    assert sum(p.numel() for p in unet.parameters()) == parameters


def test_sd21_differs_from_sd15_where_the_real_ones_do() -> None:
    sd15, sd21 = SHAPE_MODELS["sd15-shape"], SHAPE_MODELS["sd21-shape"]
    assert (sd15.unet["cross_attention_dim"], sd21.unet["cross_attention_dim"]) == (768, 1024)
    assert sd21.unet["use_linear_projection"] and "use_linear_projection" not in sd15.unet
    assert (sd15.text_encoder["num_hidden_layers"], sd21.text_encoder["num_hidden_layers"]) == (12, 23)


def test_taesd_shape_is_built_once_and_loads_as_a_tiny_vae(tmp_path: Path) -> None:
    folder = ensure_shape_model(SHAPE_VAE, cache_root=tmp_path)
    config = json.loads((folder / "config.json").read_text())
    assert config["_class_name"] == "AutoencoderTiny"
    first = (folder / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns
    assert ensure_shape_model(SHAPE_VAE, cache_root=tmp_path) == folder
    assert (folder / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns == first  # reused, not rebuilt
    from diffusers import AutoencoderTiny

    taesd = AutoencoderTiny.from_pretrained(folder)
    assert sum(p.numel() for p in taesd.parameters()) == 2_445_063  # madebyollin/taesd
    with torch.inference_mode():
        latents = taesd.encode(torch.rand(1, 3, 64, 64) * 2 - 1).latents  # (1, 4, 8, 8)
    assert latents.shape == (1, 4, 8, 8) and torch.isfinite(latents).all() and latents.std() > 0.1


def test_built_in_names_resolve_through_the_normal_loader(isolated_home: Path) -> None:
    resolved = resolve_model(ModelSpec(model="tiny-random", vae=SHAPE_VAE))
    assert resolved.vae_is_tiny and resolved.vae_path.name == SHAPE_VAE
