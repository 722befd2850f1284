"""The trained `tiny` model: its style prompts (`styles`), its photographs (`photos`) and its shipped weights.

`TRAINED_TINY_MODEL` is an ordinary diffusers folder (fp16 safetensors, an AutoencoderTiny as its VAE), written by
`bench/train_tiny.py` and loaded through `engines.loading` like any downloaded model. `tiny-random` is its
random-weight twin (`engines.testmodel`), for tests that need arbitrary weights.
"""
from __future__ import annotations

from pathlib import Path

from engines.base import ModelError

TRAINED_TINY_MODEL = Path(__file__).resolve().parent / "weights"


def tiny_model_folder(name: str) -> Path:
    """The diffusers folder of "tiny" (trained, shipped in the package) or "tiny-random" (built once into the cache)."""
    if name == "tiny-random":
        from engines.testmodel import ensure_tiny_model

        return ensure_tiny_model().model_dir
    if not (TRAINED_TINY_MODEL / "model_index.json").is_file():
        raise ModelError(f"the trained tiny model is missing from {TRAINED_TINY_MODEL}; reinstall vcam "
                         "(or retrain it with `python bench/train_tiny.py`), or use --model tiny-random")
    return TRAINED_TINY_MODEL


def tiny_vae_folder(name: str) -> Path:
    """`--vae tiny`: the trained tiny model's autoencoder; `--vae tiny-random`: the random-weight TAESD."""
    if name == "tiny-random":
        from engines.testmodel import ensure_tiny_model

        return ensure_tiny_model().taesd_dir
    return tiny_model_folder(name) / "vae"
