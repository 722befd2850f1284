"""Single-file `.safetensors` Stable Diffusion checkpoints in the original LDM key layout, loaded fully offline.

Users download models as one file (`model.diffusion_model.*`, `first_stage_model.*`, `cond_stage_model.*`), not as
diffusers folders. Such a file carries weights only, so the architecture is recognised from tensor names and shapes
and its configuration comes from a folder bundled under `engines/configs/<arch>/` — nothing is fetched from the hub.
Only safetensors is read: a pickled `.ckpt` can run code when opened, so it is refused, never unpickled.

The reverse (diffusers folder -> LDM single file), with the renaming rules of `engines.ldm_keys`, lives with the tests
(`tests/ldm_export.py`): it is how the tiny test model becomes a single file.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, Mapping

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from engines.base import ModelError
from engines.hf_imports import hf_imports
from engines.loading import read_noise_schedule

CONFIGS_DIR = Path(__file__).parent / "configs"

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."
OPEN_CLIP_PREFIX = "cond_stage_model.model."

TextLayout = Literal["clip", "open_clip"]
PredictionType = Literal["epsilon", "v_prediction"]


@dataclass(frozen=True)
class SingleFileArchitecture:
    """A model family we can load from one file: how to recognise it and where its configuration lives."""

    name: str  # folder under engines/configs/
    cross_attention_dim: int  # width of the text embeddings the UNet attends to
    text_layout: TextLayout  # OpenAI CLIP keys (SD 1.x) or OpenCLIP keys (SD 2.x)
    # Local Hugging Face cache entries (repo id, subfolder) that hold the same tokenizer, tried in order.
    cached_tokenizers: tuple[tuple[str, str], ...] = ()

    @property
    def config_dir(self) -> Path:
        return CONFIGS_DIR / self.name


ARCHITECTURES: tuple[SingleFileArchitecture, ...] = (
    SingleFileArchitecture("sd15", 768, "clip", (("openai/clip-vit-large-patch14", ""),
                                                 ("stable-diffusion-v1-5/stable-diffusion-v1-5", "tokenizer"),
                                                 ("runwayml/stable-diffusion-v1-5", "tokenizer"))),
    SingleFileArchitecture("sd21", 1024, "open_clip", (("stabilityai/sd-turbo", "tokenizer"),
                                                       ("stabilityai/stable-diffusion-2-1", "tokenizer"),
                                                       ("stabilityai/stable-diffusion-2-1-base", "tokenizer"))),
    SingleFileArchitecture("tiny", 128, "clip"),  # engines.testmodel's random-weight model; tokenizer is bundled
)

COMPONENT_NAMES = {"unet": "UNet", "vae": "VAE", "text_encoder": "text encoder"}
SUPPORTED = "an SD 1.x or SD 2.x checkpoint in the original LDM layout"


# ----------------------------------------------------------------------------------------------------- reading


def read_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Every tensor's name and shape, from the safetensors header alone (no tensor data is read).

    A pickle is refused before anything parses it; `safetensors.safe_open` refuses a truncated, padded or
    non-safetensors file (the header must cover the file exactly); both are one-line `ModelError`s.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file {path} does not exist; pass an existing .safetensors file")
    with path.open("rb") as f:
        head = f.read(8)
    if path.suffix.lower() in (".ckpt", ".pt", ".pth", ".bin") or head[:2] == b"PK" or head[:1] == b"\x80":
        raise ModelError(f"{path.name} is a pickle checkpoint, which can run code when loaded; "
                         "download the .safetensors version of this model instead")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as checkpoint:
            return {key: tuple(checkpoint.get_slice(key).get_shape()) for key in checkpoint.keys()}
    except (SafetensorError, OSError, ValueError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ModelError(f"{path.name} is not a complete .safetensors file ({reason}); "
                         "download it again") from None


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file on the CPU, after `read_shapes`'s checks (for LoRA files)."""
    read_shapes(path)
    return load_file(str(path), device="cpu")


def detect_architecture(shapes: Mapping[str, tuple[int, ...]]) -> SingleFileArchitecture:
    """Recognise the model family from key names and the UNet's cross-attention width."""
    if any(key.startswith("conditioner.") for key in shapes) or f"{UNET_PREFIX}label_emb.0.0.weight" in shapes:
        raise ModelError(f"this looks like an SDXL (or other conditioned) checkpoint; vcam loads {SUPPORTED}")
    context_widths = {shape[1] for key, shape in shapes.items()
                      if key.startswith(UNET_PREFIX) and key.endswith("attn2.to_k.weight")}
    if len(context_widths) != 1:
        raise ModelError(f"no Stable Diffusion UNet found (model.diffusion_model.*...attn2 keys); "
                         f"vcam loads {SUPPORTED}")
    width = context_widths.pop()
    if any(key.startswith(OPEN_CLIP_PREFIX) for key in shapes):
        layout: TextLayout = "open_clip"
    elif any(key.startswith(CLIP_PREFIX) for key in shapes):
        layout = "clip"
    else:
        raise ModelError(f"the checkpoint has no text encoder (cond_stage_model.*); vcam loads {SUPPORTED}")
    if not any(key.startswith(VAE_PREFIX) for key in shapes):
        raise ModelError(f"the checkpoint has no VAE (first_stage_model.*); vcam loads {SUPPORTED}")
    for arch in ARCHITECTURES:
        if arch.cross_attention_dim == width and arch.text_layout == layout:
            return arch
    raise ModelError(f"unknown architecture (cross-attention width {width}, {layout} text encoder); "
                     f"vcam loads {SUPPORTED}")


# ----------------------------------------------------------------------------------------------------- loading


def load_single_file_components(
    path: Path,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    *,
    tokenizer_dir: Path | None = None,
    prediction_type: PredictionType | None = None,
    hf_cache_dir: Path | None = None,
):
    """Load (unet, vae, text_encoder, tokenizer, noise_schedule) from one LDM-layout `.safetensors` file.

    `tokenizer_dir` (the CLI's --tokenizer) overrides where the tokenizer comes from; `prediction_type` overrides
    what the file and its neighbours say (see `resolve_prediction_type`). Nothing here touches the network.
    """
    path = Path(path)
    shapes = read_shapes(path)
    arch = detect_architecture(shapes)
    tokenizer = load_tokenizer(arch, path, tokenizer_dir, hf_cache_dir)  # before the slow part: fail fast
    schedule = replace(read_noise_schedule(arch.config_dir),
                       prediction_type=prediction_type or resolve_prediction_type(arch, path, shapes))
    check_complete(shapes, arch, path.name)
    with hf_imports():
        from diffusers import StableDiffusionPipeline

    # diffusers' own single-file loader (the LDM converters, weights assigned into empty modules with accelerate),
    # on the bundled config folder and our tokenizer: nothing is looked up on the hub.
    pipeline = StableDiffusionPipeline.from_single_file(
        str(path), config=str(arch.config_dir), local_files_only=True, tokenizer=tokenizer, safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    models = (pipeline.unet, pipeline.vae, pipeline.text_encoder)
    for model in models:
        # torch's own `to`: diffusers' override warns about fp32-only modules these SD models do not have
        torch.nn.Module.to(model, device=device, dtype=dtype).eval().requires_grad_(False)
    return (*models, tokenizer, schedule)


def check_complete(shapes: Mapping[str, tuple[int, ...]], arch: SingleFileArchitecture, file_name: str) -> None:
    """Every weight of the UNet, VAE and text encoder must be in the file with its shape (diffusers would leave a
    missing one empty and fail later with a meta-tensor error): checked on shapes alone, with no memory."""
    checkpoint = {key: torch.empty(shape, device="meta") for key, shape in shapes.items()}
    models = build_empty_components(arch)
    states = convert_checkpoint(checkpoint, arch, models["text_encoder"])
    for what, model in models.items():
        check_state_fits(model, states[what], COMPONENT_NAMES[what], file_name)


def build_empty_components(arch: SingleFileArchitecture) -> dict[str, torch.nn.Module]:
    """UNet, VAE and text encoder of `arch` without storage (meta device): random-initialising SD 1.5's
    1 B parameters only to overwrite them takes half a minute on a small CPU."""
    with hf_imports():
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextConfig, CLIPTextModel

    config_dir = arch.config_dir
    text_config = CLIPTextConfig.from_pretrained(config_dir / "text_encoder", local_files_only=True)
    with torch.device("meta"):
        return {"unet": UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(config_dir / "unet")),
                "vae": AutoencoderKL.from_config(AutoencoderKL.load_config(config_dir / "vae")),
                "text_encoder": CLIPTextModel(text_config)}


def convert_checkpoint(checkpoint: Mapping[str, torch.Tensor], arch: SingleFileArchitecture,
                       text_encoder: torch.nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    """LDM keys -> diffusers / transformers keys per component, with diffusers' own offline converters."""
    with hf_imports():
        from diffusers.loaders.single_file_utils import (
            convert_ldm_clip_checkpoint, convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint,
            convert_open_clip_checkpoint)

    unet_config = json.loads((arch.config_dir / "unet" / "config.json").read_text())
    vae_config = json.loads((arch.config_dir / "vae" / "config.json").read_text())
    if arch.text_layout == "open_clip":
        text_state = convert_open_clip_checkpoint(text_encoder, checkpoint)
    else:
        text_state = convert_ldm_clip_checkpoint(checkpoint)
    return {"unet": convert_ldm_unet_checkpoint(checkpoint, unet_config),
            "vae": convert_ldm_vae_checkpoint(checkpoint, vae_config),
            "text_encoder": _align_text_model_prefix(text_state, text_encoder)}


def check_state_fits(model: torch.nn.Module, state: Mapping[str, torch.Tensor], what: str, file_name: str) -> None:
    """Every parameter must come from the file: a random or empty layer would silently ruin the images."""
    expected = model.state_dict()
    missing = [key for key in expected if key not in state]
    wrong = [key for key in expected if key in state and tuple(state[key].shape) != tuple(expected[key].shape)]
    if missing or wrong:
        raise ModelError(f"{file_name}: the {what} does not match the detected architecture ({len(missing)} "
                         f"weights missing, {len(wrong)} of the wrong shape, e.g. {(missing or wrong)[0]}); "
                         f"vcam loads {SUPPORTED}")


def _align_text_model_prefix(state: dict[str, torch.Tensor], text_encoder: torch.nn.Module) -> dict[str, torch.Tensor]:
    """LDM files name CLIP weights `text_model.*`; transformers >= 5 dropped that level, 4.x still has it."""
    wants_prefix = any(key.startswith("text_model.") for key in text_encoder.state_dict())
    aligned = {}
    for key, value in state.items():
        bare = key.removeprefix("text_model.")
        aligned["text_model." + bare if wants_prefix else bare] = value
    return aligned


def resolve_prediction_type(arch: SingleFileArchitecture, path: Path,
                            checkpoint: Mapping[str, object]) -> PredictionType:
    """epsilon or v: a single file does not say which objective it was trained on, so look for the usual hints.

    In order: a `v_pred` marker tensor (written by ComfyUI), the original LDM yaml next to the file
    (`<name>.yaml`, `parameterization: "v"`, the A1111 convention), then the bundled default for the family.
    """
    if "v_pred" in checkpoint:
        return "v_prediction"
    sidecar = path.with_suffix(".yaml")
    if sidecar.is_file():
        is_v = re.search(r"""parameterization:\s*["']?v["']?\s*$""", sidecar.read_text(), re.MULTILINE)
        return "v_prediction" if is_v else "epsilon"
    return read_noise_schedule(arch.config_dir).prediction_type


# --------------------------------------------------------------------------------------------------- tokenizer


def load_tokenizer(arch: SingleFileArchitecture, checkpoint_path: Path, tokenizer_dir: Path | None = None,
                   hf_cache_dir: Path | None = None):
    """The CLIP tokenizer for `arch`, from local files only.

    A real model's vocabulary cannot be bundled or downloaded here, so it is looked for in: `tokenizer_dir`, the
    checkpoint's folder (`tokenizer/` or vocab.json + merges.txt), then the local Hugging Face cache. Its settings
    (padding token, length) always come from the bundled config, since they differ between SD 1.x and SD 2.x.
    """
    with hf_imports():
        from transformers import CLIPTokenizer

    settings_dir = arch.config_dir / "tokenizer"
    settings = json.loads((settings_dir / "tokenizer_config.json").read_text())
    settings = {key: value for key, value in settings.items()
                if key in ("bos_token", "eos_token", "unk_token", "pad_token", "model_max_length")}
    settings = {key: value["content"] if isinstance(value, dict) else value for key, value in settings.items()}

    candidates = [settings_dir]  # holds the vocabulary only for generated tokenizers (the tiny model)
    if tokenizer_dir is not None:
        tokenizer_dir = Path(tokenizer_dir)
        candidates = [tokenizer_dir, tokenizer_dir / "tokenizer"]
        if not any(_has_vocabulary(folder) for folder in candidates):
            raise ModelError(f"--tokenizer {tokenizer_dir} holds no vocab.json and merges.txt; "
                             "pass the tokenizer folder of a diffusers copy of this model")
    else:
        folder = Path(checkpoint_path).parent
        candidates += [folder / "tokenizer", folder]
        candidates += [found for repo, sub in arch.cached_tokenizers
                       if (found := _cached_tokenizer(repo, sub, hf_cache_dir)) is not None]
    for folder in candidates:
        if _has_vocabulary(folder):
            return CLIPTokenizer(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"), **settings)
    repo = arch.cached_tokenizers[0][0]
    raise ModelError(f"no tokenizer found for this {arch.name} checkpoint; put vocab.json and merges.txt next to it, "
                     f"pass --tokenizer FOLDER, or run `hf download {repo}` once while online")


def _has_vocabulary(folder: Path) -> bool:
    return (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()


def _cached_tokenizer(repo_id: str, subfolder: str, cache_dir: Path | None) -> Path | None:
    """The folder of a tokenizer already in the local HF cache; a pure file-system look-up, never a download."""
    from huggingface_hub import try_to_load_from_cache

    filename = f"{subfolder}/vocab.json" if subfolder else "vocab.json"
    found = try_to_load_from_cache(repo_id, filename, cache_dir=None if cache_dir is None else str(cache_dir))
    return Path(found).parent if isinstance(found, str) else None
