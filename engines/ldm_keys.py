"""diffusers -> LDM weight names of the Stable Diffusion UNet: LoRA files name their layers in either layout
(`engines.lora`). `rename_by_rules` is shared with the tests' single-file exporter, which adds the VAE's rules."""
from __future__ import annotations

import re
from typing import Callable, Mapping

from engines.base import ModelError

_RESNET_TO_LDM = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                  "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}

Rule = tuple[re.Pattern, Callable[[re.Match], str], Mapping[str, str]]


def rename_by_rules(key: str, rules: list[Rule], what: str) -> str:
    """Apply the first rule whose pattern matches the start of `key`; the rule's table renames the layer after it."""
    for pattern, new_prefix, inner in rules:
        match = pattern.match(key)
        if match:
            rest = key[match.end():]
            for old, new in inner.items():
                if rest.startswith(old + "."):
                    rest = new + rest[len(old):]
                    break
            return new_prefix(match) + rest
    raise ModelError(f"{what} weight {key} has no place in the LDM layout; only SD-style models can be exported")


def _unet_rules(layers_per_block: int, up_blocks_with_attention: set[int]) -> list[Rule]:
    """diffusers UNet2DConditionModel -> LDM `input_blocks` / `middle_block` / `output_blocks` numbering."""
    per_block = layers_per_block + 1  # LDM counts the resnets of a block plus its down/upsampler
    down = lambda block, layer: 1 + int(block) * per_block + int(layer)  # noqa: E731 (input_blocks.0 is conv_in)
    up = lambda block, layer: int(block) * per_block + int(layer)  # noqa: E731
    up_sampler_slot = lambda block: 2 if int(block) in up_blocks_with_attention else 1  # noqa: E731 (after attn)
    c = re.compile
    return [
        (c(r"time_embedding\.linear_1\."), lambda m: "time_embed.0.", {}),
        (c(r"time_embedding\.linear_2\."), lambda m: "time_embed.2.", {}),
        (c(r"conv_in\."), lambda m: "input_blocks.0.0.", {}),
        (c(r"conv_norm_out\."), lambda m: "out.0.", {}),
        (c(r"conv_out\."), lambda m: "out.2.", {}),
        (c(r"down_blocks\.(\d+)\.resnets\.(\d+)\."), lambda m: f"input_blocks.{down(m[1], m[2])}.0.", _RESNET_TO_LDM),
        (c(r"down_blocks\.(\d+)\.attentions\.(\d+)\."), lambda m: f"input_blocks.{down(m[1], m[2])}.1.", {}),
        (c(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\."),
         lambda m: f"input_blocks.{down(m[1], layers_per_block)}.0.op.", {}),
        (c(r"mid_block\.resnets\.(\d+)\."), lambda m: f"middle_block.{2 * int(m[1])}.", _RESNET_TO_LDM),
        (c(r"mid_block\.attentions\.0\."), lambda m: "middle_block.1.", {}),
        (c(r"up_blocks\.(\d+)\.resnets\.(\d+)\."), lambda m: f"output_blocks.{up(m[1], m[2])}.0.", _RESNET_TO_LDM),
        (c(r"up_blocks\.(\d+)\.attentions\.(\d+)\."), lambda m: f"output_blocks.{up(m[1], m[2])}.1.", {}),
        (c(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\."),
         lambda m: f"output_blocks.{up(m[1], layers_per_block)}.{up_sampler_slot(m[1])}.conv.", {}),
    ]


def ldm_unet_key(key: str, unet_config: Mapping) -> str:
    """The LDM name (`input_blocks.4.1.proj_in.weight`) of a diffusers UNet weight, for a UNet of `unet_config`."""
    up_with_attention = {i for i, kind in enumerate(unet_config["up_block_types"]) if "CrossAttn" in kind}
    return rename_by_rules(key, _unet_rules(int(unet_config["layers_per_block"]), up_with_attention), "UNet")
