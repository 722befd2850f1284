"""Which weight files may be read: safetensors only, checked from their bytes before any loader sees them.

A pickle (`.bin`, `.ckpt`, `.pt`) can run code when loaded, and diffusers / transformers choose their loader by
each file's suffix, even under `use_safetensors=True` when a shard index names `.bin` shards. So every file a
model, VAE, LoRA or text encoder would load is named and checked here first (index files included), and a torch
whose own loader unpickles by default is named as unsafe.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from safetensors import SafetensorError, safe_open

from engines.base import ModelError

PICKLE_SUFFIXES = (".ckpt", ".bin", ".pt", ".pth", ".pkl")
# torch.load defaults to weights_only=True from 2.6 on; older loaders unpickle arbitrary objects (CVE-2025-32434 even
# reaches weights_only=True in <= 2.5.1). vcam never calls a pickle loader, but diffusers / transformers may.
SAFE_TORCH = (2, 6)


def torch_loader_problem(version: str) -> str:
    """Why a torch `version` ("2.5.1+cu121") is unsafe to load models with, naming the fix; "" when it is >= 2.6."""
    release = tuple(int(part) for part in re.findall(r"\d+", version.split("+")[0])[:2])
    if release >= SAFE_TORCH:
        return ""
    return (f"torch {version} is older than 2.6: its torch.load unpickles by default (and weights_only is "
            "bypassable, CVE-2025-32434); pip install 'torch>=2.6' (the installer picks the right build)")


def check_safetensors(path: Path) -> None:
    """Refuse a truncated or non-safetensors file by reading only its header (cheap even for 5 GB files):
    `safetensors.safe_open` parses the header and requires it to cover the file exactly, which catches interrupted
    downloads and copies."""
    try:
        with safe_open(str(path), framework="numpy"):  # the header alone; "pt" would import torch (seconds)
            pass
    except (SafetensorError, OSError):
        raise ModelError(f"{path} is not a complete .safetensors file (truncated or corrupt); download or convert it "
                         "again") from None


def refuse_pickle(path: Path, what: str) -> None:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ModelError(
            f"{what} {path} is a pickle file ({path.suffix}), which can run code when loaded; "
            "use a .safetensors version of it (or convert it once in a sandbox)")


def _variant_of(file_name: str) -> str | None:
    """`model.fp16.safetensors` -> "fp16"; `model.safetensors` and its shards `model-00001-of-00002...` -> None."""
    parts = file_name.removesuffix(".index.json").removesuffix(".safetensors").split(".")
    return parts[1].split("-")[0] if len(parts) > 1 else None


def component_variant(component_dir: Path) -> str | None:
    """Which weights variant a component loads: the plain one if present, else e.g. the fp16-only download."""
    variants = {_variant_of(p.name) for p in component_dir.iterdir()
                if p.name.endswith((".safetensors", ".safetensors.index.json"))}
    if not variants or None in variants:
        return None
    return "fp16" if "fp16" in variants else sorted(variants)[0]


def _index_shards(index_file: Path, component_dir: Path) -> list[Path]:
    """The shards a `*.safetensors.index.json` names; a shard that is not a .safetensors file in the folder is refused.

    diffusers and transformers load each shard by its own suffix, so an index that names `.bin` shards sends them
    to torch.load (a pickle loader) even with `use_safetensors=True`; a name with a folder could reach outside.
    """
    try:
        weight_map = json.loads(index_file.read_text(encoding="utf-8")).get("weight_map")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        weight_map = None
    if not isinstance(weight_map, dict) or not weight_map:
        raise ModelError(f"{index_file} is not a shard index with a weight_map; download the model again")
    shards = sorted({str(shard) for shard in weight_map.values()})
    for shard in shards:
        if not shard.endswith(".safetensors") or Path(shard).name != shard:
            raise ModelError(
                f"{index_file} points at {shard!r}, which is not a .safetensors file in {component_dir} and could run "
                "code when loaded; use the model's safetensors version or convert its weights to .safetensors")
    return [component_dir / shard for shard in shards]


def component_weights(component_dir: Path) -> list[Path]:
    """The .safetensors files a component loads (single file or shards); pickled weights are refused.

    Every index in the folder is checked, not only the one the loader is expected to pick: which index diffusers or
    transformers opens depends on file names and the variant, and a refusal is cheaper than a wrong guess.
    """
    indexes = {index: _index_shards(index, component_dir)
               for index in sorted(component_dir.glob("*.safetensors.index.json"))}
    variant = component_variant(component_dir)
    chosen = [index for index in indexes if _variant_of(index.name) == variant]
    if chosen:
        weights = indexes[chosen[0]]
        missing = [w.name for w in weights if not w.is_file()]
        if missing:
            raise ModelError(f"{component_dir} is missing weight shards {missing}; download the model again")
        return weights
    weights = sorted(p for p in component_dir.glob("*.safetensors") if _variant_of(p.name) == variant)
    if not weights:
        if any(p.suffix in PICKLE_SUFFIXES for p in component_dir.iterdir()):
            raise ModelError(
                f"{component_dir} has only pickled weights (.bin), which can run code when loaded; "
                "use the model's safetensors version or convert it to .safetensors")
        raise ModelError(f"{component_dir} has no .safetensors weights; download the model again")
    return weights
