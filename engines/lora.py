"""LoRA fusion: fold a low-rank adapter into the UNet / text-encoder weights once, at load time.

A fused LoRA costs nothing per frame and needs no peft: every engine (torch, ONNX, TensorRT) then sees plain
weights. Each adapted layer gets W <- W + scale * alpha / rank * up @ down (convolutions flattened over their
kernel). Two file layouts are read: kohya (`lora_unet_<module_path_with_underscores>.lora_down.weight`,
`.lora_up.weight`, `.alpha`; `lora_te_...` for the text encoder), including kohya files that name UNet layers
the LDM way (`lora_unet_input_blocks_1_1_proj_in`), and diffusers / peft (`unet.<module.path>.lora_A.weight`,
`.lora_B.weight`, optional `.alpha`). A key that matches no layer means a LoRA for another base model: refused.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from engines.base import ModelError
from engines.ldm_keys import ldm_unet_key
from engines.single_file import read_checkpoint

LoraLayout = Literal["kohya", "diffusers"]

# suffix -> role; peft's A/B, kohya's down/up and the older diffusers `.lora.down` all mean the same two factors
_ROLES = {".lora_down.weight": "down", ".lora_up.weight": "up", ".lora_A.weight": "down", ".lora_B.weight": "up",
          ".lora.down.weight": "down", ".lora.up.weight": "up", ".alpha": "alpha"}
_PREFIXES: dict[str, tuple[str, LoraLayout]] = {"lora_unet_": ("unet", "kohya"), "lora_te_": ("text_encoder", "kohya"),
                                               "unet.": ("unet", "diffusers"),
                                               "text_encoder.": ("text_encoder", "diffusers")}


@dataclass(frozen=True)
class FusedLoraReport:
    """What a fusion changed, for the log line and for tests."""

    path: Path
    layout: LoraLayout
    scale: float
    unet_layers: int
    text_encoder_layers: int


@dataclass(frozen=True)
class _LoraLayer:
    name: str  # the layer name as the file spells it, without the role suffix
    down: torch.Tensor  # (rank, in, [kh, kw])
    up: torch.Tensor  # (out, rank, [1, 1])
    alpha: float | None  # None: alpha = rank, i.e. no extra scaling


def fuse_lora(unet: torch.nn.Module, text_encoder: torch.nn.Module, lora_path: Path,
              scale: float = 1.0) -> FusedLoraReport:
    """Add `scale * alpha/rank * up @ down` to every layer the LoRA file adapts, in place."""
    lora_path = Path(lora_path)
    layers, layout = _read_layers(lora_path)
    targets = {"unet": _unet_layer_names(unet, layout), "text_encoder": _text_layer_names(text_encoder, layout)}
    matched: list[tuple[torch.nn.Module, _LoraLayer]] = []
    unmatched: list[str] = []
    counts = {"unet": 0, "text_encoder": 0}
    for layer in layers:
        prefix = _prefix_of(layer.name)
        component = _PREFIXES[prefix][0] if prefix else "unet"
        module = targets[component].get(layer.name) if prefix else None
        if module is None:
            unmatched.append(layer.name)
        else:
            matched.append((module, layer))
            counts[component] += 1
    if unmatched:
        shown = ", ".join(unmatched[:3]) + (f" and {len(unmatched) - 3} more" if len(unmatched) > 3 else "")
        raise ModelError(f"{lora_path.name} adapts layers this model does not have ({shown}); "
                         "use a LoRA trained for this base model (SD 1.x and SD 2.x LoRAs do not mix)")
    deltas = [(module, _delta(module, layer, scale, lora_path)) for module, layer in matched]  # check all, then fuse
    with torch.no_grad():
        for module, delta in deltas:
            module.weight += delta.to(device=module.weight.device, dtype=module.weight.dtype)
    return FusedLoraReport(lora_path, layout, scale, counts["unet"], counts["text_encoder"])


def _read_layers(path: Path) -> tuple[list[_LoraLayer], LoraLayout]:
    tensors = read_checkpoint(path)
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        suffix = next((s for s in _ROLES if key.endswith(s)), None)
        if suffix is None:
            raise ModelError(f"{path.name} is not a LoRA in the kohya or diffusers layout (e.g. {key}); "
                             "use a LoRA .safetensors made for Stable Diffusion 1.x / 2.x")
        parts.setdefault(key[: -len(suffix)], {})[_ROLES[suffix]] = value
    incomplete = [name for name, found in parts.items() if "down" not in found or "up" not in found]
    if incomplete or not parts:
        example = incomplete[0] if incomplete else "an empty file"
        raise ModelError(f"{path.name} has a LoRA layer without both factors ({example}); "
                         "the file is damaged, download it again")
    layouts = {_PREFIXES[prefix][1] for name in parts if (prefix := _prefix_of(name))}
    if len(layouts) > 1:
        raise ModelError(f"{path.name} mixes kohya and diffusers key names; re-save it in one layout")
    layers = [_LoraLayer(name, found["down"], found["up"],
                         float(found["alpha"].item()) if "alpha" in found else None) for name, found in parts.items()]
    return layers, layouts.pop() if layouts else "kohya"


def _prefix_of(name: str) -> str | None:
    """Which component a LoRA layer belongs to; None for names no SD 1.x / 2.x model has (e.g. SDXL's lora_te2_)."""
    return next((prefix for prefix in _PREFIXES if name.startswith(prefix)), None)


def adaptable_layers(model: torch.nn.Module):
    """(name, module) of every Linear and Conv2d layer of `model`: the layers a LoRA may adapt."""
    return ((name, module) for name, module in model.named_modules()
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)))


def _unet_layer_names(unet: torch.nn.Module, layout: LoraLayout) -> dict[str, torch.nn.Module]:
    """Every name a LoRA file may use for each UNet Linear / Conv2d layer."""
    names: dict[str, torch.nn.Module] = {}
    for name, module in adaptable_layers(unet):
        if layout == "diffusers":
            names[f"unet.{name}"] = module
            continue
        names["lora_unet_" + name.replace(".", "_")] = module
        config = getattr(unet, "config", None)
        if config is not None and "layers_per_block" in config:
            try:
                ldm_name = ldm_unet_key(f"{name}.weight", config).removesuffix(".weight")
            except ModelError:
                continue  # a layer LDM has no name for cannot be adapted by an LDM-named LoRA either
            names["lora_unet_" + ldm_name.replace(".", "_")] = module
    return names


def _text_layer_names(text_encoder: torch.nn.Module, layout: LoraLayout) -> dict[str, torch.nn.Module]:
    """LoRA files say `text_model.encoder...`; transformers >= 5 dropped the `text_model` level, so add it back."""
    names: dict[str, torch.nn.Module] = {}
    for name, module in adaptable_layers(text_encoder):
        full = name if name.startswith("text_model.") else f"text_model.{name}"
        if layout == "diffusers":
            names[f"text_encoder.{full}"] = module
        else:
            names["lora_te_" + full.replace(".", "_")] = module
    return names


def _delta(module: torch.nn.Module, layer: _LoraLayer, scale: float, path: Path) -> torch.Tensor:
    """scale * alpha/rank * up @ down, shaped like the layer's weight (a 3x3 conv: the down factor is 3x3)."""
    rank = layer.down.shape[0]
    weight = module.weight
    if layer.up.shape[1] != rank or layer.up[0].numel() != rank:
        raise ModelError(f"{path.name}: {layer.name} has mismatched factors {tuple(layer.up.shape)} and "
                         f"{tuple(layer.down.shape)}; the file is damaged, download it again")
    product = layer.up.reshape(layer.up.shape[0], rank).float() @ layer.down.reshape(rank, -1).float()
    if product.numel() != weight.numel() or product.shape[0] != weight.shape[0]:
        raise ModelError(f"{path.name}: {layer.name} is {tuple(product.shape)} but the model's layer is "
                         f"{tuple(weight.shape)}; use a LoRA trained for this base model")
    alpha = rank if layer.alpha is None else layer.alpha
    return (scale * alpha / rank) * product.reshape(weight.shape)
