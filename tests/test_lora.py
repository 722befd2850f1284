"""LoRA fusion: W + scale * alpha/rank * up @ down on every adapted layer, both file layouts, refusals in one line."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from engines.base import ModelError
from engines.lora import fuse_lora
from tests.lora_files import write_test_lora
from engines.ldm_keys import ldm_unet_key
from engines.testmodel import TinyModelPaths

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def pristine(tiny_model_dir: TinyModelPaths):
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    unet = UNet2DConditionModel.from_pretrained(tiny_model_dir.model_dir / "unet").eval()
    text_encoder = CLIPTextModel.from_pretrained(tiny_model_dir.model_dir / "text_encoder").eval()
    return unet, text_encoder


@pytest.fixture
def models(pristine):
    """Fresh copies per test: fusion changes weights in place."""
    return copy.deepcopy(pristine[0]), copy.deepcopy(pristine[1])


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.clone() for name, value in model.state_dict().items()}


def _unet_output(unet: torch.nn.Module) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    latents = torch.randn(1, 4, 8, 8, generator=generator)  # (1, 4, h, w): a 64x64 image
    context = torch.randn(1, 77, 128, generator=generator)
    with torch.no_grad():
        return unet(latents, torch.tensor([500]), context).sample


def test_each_fused_weight_is_w_plus_scaled_up_times_down(models, tmp_path: Path) -> None:
    unet, text_encoder = models
    before = {"unet": _weights(unet), "text_encoder": _weights(text_encoder)}
    lora_file = write_test_lora(unet, tmp_path / "lora.safetensors", rank=4, seed=3, layout="diffusers",
                                text_encoder=text_encoder)
    report = fuse_lora(unet, text_encoder, lora_file, scale=0.7)

    lora = load_file(str(lora_file))
    kernel_sizes = set()
    for key in [k for k in lora if k.endswith(".lora_A.weight")]:
        layer = key.removesuffix(".lora_A.weight")
        component, module_path = layer.split(".", 1)
        model = unet if component == "unet" else text_encoder
        module_path = module_path if component == "unet" else module_path.removeprefix("text_model.")
        down, up, alpha = lora[key], lora[f"{layer}.lora_B.weight"], lora[f"{layer}.alpha"].item()
        w0 = before[component][f"{module_path}.weight"]
        expected = w0 + 0.7 * alpha / 4 * (up.flatten(1) @ down.flatten(1)).reshape(w0.shape)
        fused = model.get_submodule(module_path).weight
        assert (fused - expected).abs().max() < 1e-6, layer
        assert not torch.equal(fused, w0)
        kernel_sizes.add(tuple(w0.shape[2:]))
    assert {(), (1, 1), (3, 3)} <= kernel_sizes  # Linear, 1x1 and 3x3 convolutions all checked
    unet_layers = sum(k.startswith("unet.") and k.endswith(".lora_A.weight") for k in lora)
    assert (report.unet_layers, report.text_encoder_layers) == (unet_layers, len(lora) // 3 - unet_layers)
    assert report.text_encoder_layers > 0 and report.layout == "diffusers"


def test_fusion_changes_the_unet_output(models, tmp_path: Path) -> None:
    unet, text_encoder = models
    reference = _unet_output(unet)
    fuse_lora(unet, text_encoder, write_test_lora(unet, tmp_path / "lora.safetensors", rank=2, seed=0))
    assert (_unet_output(unet) - reference).abs().max() > 1e-3


def test_scale_zero_changes_nothing(models, tmp_path: Path) -> None:
    unet, text_encoder = models
    before, text_before = _weights(unet), _weights(text_encoder)
    lora_file = write_test_lora(unet, tmp_path / "lora.safetensors", rank=4, seed=0, text_encoder=text_encoder)
    report = fuse_lora(unet, text_encoder, lora_file, scale=0.0)
    assert report.unet_layers > 0
    assert all(torch.equal(value, before[name]) for name, value in unet.state_dict().items())
    assert all(torch.equal(value, text_before[name]) for name, value in text_encoder.state_dict().items())


def test_kohya_and_diffusers_layouts_fuse_identically(pristine, tmp_path: Path) -> None:
    fused = {}
    for layout in ("kohya", "diffusers"):
        unet, text_encoder = copy.deepcopy(pristine[0]), copy.deepcopy(pristine[1])
        lora_file = write_test_lora(unet, tmp_path / f"{layout}.safetensors", rank=4, seed=5, layout=layout,
                                    text_encoder=text_encoder)
        report = fuse_lora(unet, text_encoder, lora_file, scale=1.0)
        assert report.layout == layout
        fused[layout] = (_weights(unet), _weights(text_encoder), report.unet_layers, report.text_encoder_layers)
    kohya, diffusers = fused["kohya"], fused["diffusers"]
    assert kohya[2:] == diffusers[2:]
    for ours, theirs in zip(kohya[:2], diffusers[:2]):
        assert all(torch.equal(ours[name], theirs[name]) for name in ours)


def test_kohya_file_with_ldm_layer_names_fuses_like_diffusers_names(pristine, tmp_path: Path) -> None:
    unet, text_encoder = copy.deepcopy(pristine[0]), copy.deepcopy(pristine[1])
    diffusers_named = write_test_lora(unet, tmp_path / "d.safetensors", rank=4, seed=2, layout="diffusers")
    renamed = {}
    for key, value in load_file(str(diffusers_named)).items():
        layer, role = key.removeprefix("unet.").split(".lora_") if ".lora_" in key else (
            key.removeprefix("unet.").removesuffix(".alpha"), None)
        ldm = ldm_unet_key(f"{layer}.weight", unet.config).removesuffix(".weight").replace(".", "_")
        suffix = {"A.weight": ".lora_down.weight", "B.weight": ".lora_up.weight", None: ".alpha"}[role]
        renamed[f"lora_unet_{ldm}{suffix}"] = value
    save_file(renamed, str(tmp_path / "ldm.safetensors"))
    assert "lora_unet_input_blocks_1_1_proj_in.lora_down.weight" in renamed

    fuse_lora(unet, text_encoder, diffusers_named)
    other = copy.deepcopy(pristine[0])
    fuse_lora(other, copy.deepcopy(pristine[1]), tmp_path / "ldm.safetensors")
    assert all(torch.equal(value, unet.state_dict()[name]) for name, value in other.state_dict().items())


def test_lora_for_another_base_model_is_refused_naming_its_keys(models, tmp_path: Path) -> None:
    unet, text_encoder = models
    before = _weights(unet)
    lora = load_file(str(write_test_lora(unet, tmp_path / "ok.safetensors", rank=2, seed=0)))
    lora["lora_unet_down_blocks_7_attentions_0_proj_in.lora_down.weight"] = torch.zeros(2, 64, 1, 1)
    lora["lora_unet_down_blocks_7_attentions_0_proj_in.lora_up.weight"] = torch.zeros(64, 2, 1, 1)
    lora["lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight"] = torch.zeros(2, 1280)
    lora["lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight"] = torch.zeros(1280, 2)
    save_file(lora, str(tmp_path / "other.safetensors"))
    with pytest.raises(ModelError) as error:
        fuse_lora(unet, text_encoder, tmp_path / "other.safetensors")
    message = str(error.value)
    assert "\n" not in message
    assert "lora_unet_down_blocks_7_attentions_0_proj_in" in message and "lora_te2_text_model" in message
    assert "trained for this base model" in message
    assert all(torch.equal(value, before[name]) for name, value in unet.state_dict().items())  # nothing half-fused


def test_lora_of_the_wrong_width_is_refused(models, tmp_path: Path) -> None:
    unet, text_encoder = models
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    save_file({f"{name}.lora_down.weight": torch.zeros(4, 768), f"{name}.lora_up.weight": torch.zeros(64, 4)},
              str(tmp_path / "sd15-lora.safetensors"))
    with pytest.raises(ModelError) as error:
        fuse_lora(unet, text_encoder, tmp_path / "sd15-lora.safetensors")
    assert "\n" not in str(error.value) and "(64, 768)" in str(error.value) and "(64, 128)" in str(error.value)


def test_file_that_is_not_a_lora_is_refused(models, tmp_path: Path) -> None:
    unet, text_encoder = models
    save_file({"model.diffusion_model.conv_in.weight": torch.zeros(4)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(ModelError) as error:
        fuse_lora(unet, text_encoder, tmp_path / "model.safetensors")
    assert "\n" not in str(error.value) and "not a LoRA" in str(error.value)
