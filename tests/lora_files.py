"""Test-only: random LoRA files for the tiny model, in the kohya and the diffusers layout (`engines.lora` reads both)."""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from engines.lora import LoraLayout, adaptable_layers


def write_test_lora(unet: torch.nn.Module, path: Path, rank: int = 4, seed: int = 0,
                    layout: LoraLayout = "kohya", text_encoder: torch.nn.Module | None = None) -> Path:
    """A random LoRA for the tiny model: attention projections, 1x1 proj_in/out and 3x3 resnet convolutions.

    The same seed gives the same factors in both layouts, so fusing either must change the weights identically.
    Its alpha is rank / 2, so a fusion that ignores alpha is caught.
    """
    generator = torch.Generator().manual_seed(seed)
    wanted = (".to_q", ".to_k", ".to_v", ".to_out.0", ".proj_in", ".proj_out", ".conv1", ".q_proj", ".v_proj")
    models = [("unet", unet)] + ([("text_encoder", text_encoder)] if text_encoder is not None else [])
    tensors: dict[str, torch.Tensor] = {}
    for component, model in models:
        for name, module in adaptable_layers(model):
            if not name.endswith(wanted):
                continue
            weight = module.weight
            down = torch.randn((rank, *weight.shape[1:]), generator=generator) * 0.1  # (rank, in, [kh, kw])
            up = torch.randn((weight.shape[0], rank, *([1, 1] if weight.ndim == 4 else [])), generator=generator) * 0.1
            key = _file_name(component, name, layout)
            down_suffix, up_suffix = (".lora_down.weight", ".lora_up.weight") if layout == "kohya" else (
                ".lora_A.weight", ".lora_B.weight")
            tensors[key + down_suffix], tensors[key + up_suffix] = down.contiguous(), up.contiguous()
            tensors[key + ".alpha"] = torch.tensor(rank / 2)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    return path


def _file_name(component: str, name: str, layout: LoraLayout) -> str:
    if component == "text_encoder" and not name.startswith("text_model."):
        name = f"text_model.{name}"
    if layout == "diffusers":
        return f"{component}.{name}"
    return ("lora_unet_" if component == "unet" else "lora_te_") + name.replace(".", "_")
