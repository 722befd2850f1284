"""Test-only: a diffusers folder written as one LDM-layout `.safetensors` checkpoint (the reverse of
`engines.single_file`), and the weight-free configuration bundled under `engines/configs/<arch>/`.

The tiny test model becomes a single file this way; loading it back through diffusers' LDM converters checks both
sides. The shipped product only ever reads such files.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Mapping

import torch
from safetensors.torch import load_file, save_file

from engines.base import ModelError
from engines.ldm_keys import Rule, ldm_unet_key, rename_by_rules
from engines.single_file import CLIP_PREFIX, UNET_PREFIX, VAE_PREFIX


def export_single_file(model_dir: Path, out_file: Path) -> Path:
    """Write a diffusers folder (unet, vae, text_encoder) as one LDM-layout SD 1.x-style `.safetensors` file."""
    model_dir, out_file = Path(model_dir), Path(out_file)
    checkpoint = ldm_state_dict(
        _read_component(model_dir, "unet"), json.loads((model_dir / "unet" / "config.json").read_text()),
        _read_component(model_dir, "vae"), json.loads((model_dir / "vae" / "config.json").read_text()),
        _read_component(model_dir, "text_encoder"))
    out_file.parent.mkdir(parents=True, exist_ok=True)
    save_file({key: value.contiguous() for key, value in checkpoint.items()}, str(out_file))
    return out_file


def ldm_state_dict(unet_state: Mapping[str, torch.Tensor], unet_config: Mapping,
                   vae_state: Mapping[str, torch.Tensor], vae_config: Mapping,
                   text_state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers / transformers state dicts -> one LDM checkpoint dict (SD 1.x naming, OpenAI CLIP text keys)."""
    out = {UNET_PREFIX + ldm_unet_key(key, unet_config): value for key, value in unet_state.items()}
    for key, value in vae_state.items():
        ldm_key = ldm_vae_key(key, vae_config)
        if ".mid.attn_1." in ldm_key and ldm_key.endswith(".weight") and value.ndim == 2:
            value = value[:, :, None, None]  # LDM's VAE attention uses 1x1 convolutions, diffusers Linear layers
        out[VAE_PREFIX + ldm_key] = value
    for key, value in text_state.items():
        out[CLIP_PREFIX + "text_model." + key.removeprefix("text_model.")] = value  # as SD 1.x files name them
    return out


def _read_component(model_dir: Path, component: str) -> dict[str, torch.Tensor]:
    files = sorted((model_dir / component).glob("*.safetensors"))
    if not files:
        raise ModelError(f"{model_dir / component} has no .safetensors weights; save the model with safetensors")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_file(str(file)))
    return state


CONFIG_FILES = ("model_index.json", "unet/config.json", "vae/config.json", "text_encoder/config.json",
                "scheduler/scheduler_config.json")
_VERSION_FIELDS = ("_diffusers_version", "transformers_version", "_name_or_path", "dtype", "torch_dtype")


def architecture_config_from_folder(model_dir: Path, out_dir: Path, with_vocabulary: bool) -> Path:
    """Write the weight-free configuration of a diffusers folder, as bundled under `engines/configs/<arch>/`.

    Version stamps are dropped so the bundle only changes when the architecture does. `with_vocabulary` also
    copies vocab.json / merges.txt: right for a generated tokenizer (the tiny model), not for a real one.
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    for name in CONFIG_FILES:
        config = json.loads((model_dir / name).read_text())
        config = {key: value for key, value in config.items() if key not in _VERSION_FIELDS}
        (out_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (out_dir / name).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    tokenizer_files = ["tokenizer_config.json", "special_tokens_map.json"]
    tokenizer_files += ["vocab.json", "merges.txt"] if with_vocabulary else []
    (out_dir / "tokenizer").mkdir(parents=True, exist_ok=True)
    for name in tokenizer_files:
        (out_dir / "tokenizer" / name).write_bytes((model_dir / "tokenizer" / name).read_bytes())
    return out_dir


_VAE_ATTENTION_TO_LDM = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _vae_rules(num_up_blocks: int) -> list[Rule]:
    """diffusers AutoencoderKL -> LDM `down.i.block.j` / `mid.block_k` / `up.i` (decoder blocks numbered in reverse)."""
    c = re.compile
    return [
        (c(r"(encoder|decoder|quant_conv|post_quant_conv)\.(conv_in\.|conv_out\.|weight|bias)"), lambda m: m[0], {}),
        (c(r"(encoder|decoder)\.conv_norm_out\."), lambda m: f"{m[1]}.norm_out.", {}),
        (c(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\."), lambda m: f"encoder.down.{m[1]}.block.{m[2]}.",
         {"conv_shortcut": "nin_shortcut"}),
        (c(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\."), lambda m: f"encoder.down.{m[1]}.downsample.conv.",
         {}),
        (c(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\."), lambda m: f"{m[1]}.mid.block_{int(m[2]) + 1}.",
         {"conv_shortcut": "nin_shortcut"}),
        (c(r"(encoder|decoder)\.mid_block\.attentions\.0\."), lambda m: f"{m[1]}.mid.attn_1.", _VAE_ATTENTION_TO_LDM),
        (c(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\."),
         lambda m: f"decoder.up.{num_up_blocks - 1 - int(m[1])}.block.{m[2]}.", {"conv_shortcut": "nin_shortcut"}),
        (c(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\."),
         lambda m: f"decoder.up.{num_up_blocks - 1 - int(m[1])}.upsample.conv.", {}),
    ]


def ldm_vae_key(key: str, vae_config: Mapping) -> str:
    """The LDM name (`decoder.up.1.block.0.nin_shortcut.weight`) of a diffusers VAE weight, for a VAE of `vae_config`."""
    return rename_by_rules(key, _vae_rules(len(vae_config["up_block_types"])), "VAE")
