"""Finding and loading a diffusion model offline, safely, with errors a user can act on.

Every engine starts here. `resolve_model` checks everything that can be checked from files alone (paths,
components, architecture, safetensors integrity, pickle refusal, Hugging Face cache lookup) *before* a GPU is
touched, so a wrong `--model` fails in a second with one line naming the fix instead of a traceback minutes in.
Nothing here ever opens a network connection or unpickles a file: a model file must never be able to run code.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from engines.base import ModelError, NoiseScheduleConfig
from engines.hf_imports import hf_imports
from engines.weight_files import check_safetensors, component_variant, component_weights, refuse_pickle

if TYPE_CHECKING:  # torch is imported where a model loads: resolving and checking settings must not pay for it
    import torch

REQUIRED_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer")
HF_ID_PATTERN = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
HASH_SAMPLES = 64  # chunks read per large weight file for the content hash
HASH_CHUNK = 1 << 16
HOW_TO_PASS_A_MODEL = "pass a diffusers folder, a .safetensors checkpoint, an org/name in the Hugging Face cache, or tiny"
TINY_MODELS = ("tiny", "tiny-random")  # built-in model names: the trained small model and its random twin
# Built-in benchmark models: random weights in the real SD 1.5 / SD 2.1 architectures (engines.shape_models)
SHAPE_MODELS = ("sd15-shape", "sd21-shape")
SHAPE_VAE = "taesd-shape"


@dataclass(frozen=True)
class ModelSpec:
    """What the user asked for: `model` is "tiny" (the trained small model shipped with vcam), "tiny-random" (the
    random-weight model of the same architecture, built into the user cache), a diffusers folder, a .safetensors
    file or an HF id (org/name).

    `vae` optionally replaces the model's VAE: a TAESD (AutoencoderTiny) or AutoencoderKL folder, an HF id,
    "tiny" for the trained tiny model's autoencoder or "tiny-random" for the random-weight TAESD.
    `lora` are .safetensors files fused into the weights at `lora_scale`.
    `tokenizer` is a folder with a CLIP tokenizer for single-file checkpoints, which carry no tokenizer.
    """

    model: str
    vae: str | None = None
    lora: tuple[str, ...] = ()
    lora_scale: float = 1.0
    tokenizer: str | None = None


@dataclass(frozen=True)
class ResolvedModel:
    """A spec checked against the files: concrete paths, what they are, and a hash of everything that loads."""

    kind: Literal["folder", "single_file"]
    path: Path  # the diffusers folder, or the .safetensors checkpoint
    vae_path: Path | None
    vae_is_tiny: bool  # the replacement VAE is a TAESD (AutoencoderTiny)
    lora_paths: tuple[Path, ...]
    lora_scale: float
    tokenizer_path: Path | None  # only used for single-file checkpoints
    content_hash: str  # changes whenever any loaded weight, config, VAE, LoRA or LoRA scale changes


@dataclass(frozen=True)
class DiffusionComponents:
    """The loaded parts of an SD 1.x / 2.x model, on their device and dtype, ready for an engine."""

    unet: Any  # diffusers UNet2DConditionModel
    vae: Any  # diffusers AutoencoderKL or AutoencoderTiny
    text_encoder: Any  # transformers CLIPTextModel
    tokenizer: Any  # transformers CLIPTokenizer
    noise_schedule: NoiseScheduleConfig
    content_hash: str


# --- config files -------------------------------------------------------------------------------


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{what} is missing {path.name} at {path}; {HOW_TO_PASS_A_MODEL}") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ModelError(f"{path} is not valid JSON; download the model again") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path} is not a JSON object; download the model again")
    return data


# --- architecture checks ----------------------------------------------------------------------------------------


def _check_sd_architecture(folder: Path) -> None:
    """Accept SD 1.x / 2.x style folders only: 4-channel latents, a cross-attention UNet, a CLIP text encoder."""
    index = _read_json(folder / "model_index.json", f"folder {folder}")
    pipeline = str(index.get("_class_name", ""))
    if "XL" in pipeline or "text_encoder_2" in index:
        raise ModelError(f"{folder} is an SDXL model ({pipeline}); vcam runs SD 1.x / 2.x models, pass one of those")
    missing = [name for name in REQUIRED_COMPONENTS if not (folder / name).is_dir()]
    if missing:
        raise ModelError(
            f"{folder} is missing the {', '.join(missing)} folder(s) of a Stable Diffusion model; "
            "download the complete model (all components)")
    unet = _read_json(folder / "unet" / "config.json", "the unet folder")
    if unet.get("_class_name") != "UNet2DConditionModel" or not unet.get("cross_attention_dim"):
        raise ModelError(f"{folder}/unet is not a text-conditioned UNet2DConditionModel; pass an SD 1.x / 2.x model")
    if unet.get("in_channels") != 4:
        raise ModelError(
            f"{folder}/unet takes {unet.get('in_channels')} input channels (inpainting/depth model?); "
            "vcam needs a plain 4-channel SD 1.x / 2.x model")
    if unet.get("addition_embed_type") not in (None, "text"):  # "text" pools the prompt: nothing else needed
        raise ModelError(f"{folder}/unet needs extra conditioning ({unet['addition_embed_type']}, SDXL-style); "
                         "pass an SD 1.x / 2.x model")
    text = _read_json(folder / "text_encoder" / "config.json", "the text_encoder folder")
    if text.get("hidden_size") != unet["cross_attention_dim"]:
        raise ModelError(
            f"{folder}: text encoder width {text.get('hidden_size')} does not match the UNet's cross-attention "
            f"width {unet['cross_attention_dim']}; the components come from different models, download it again")
    _check_vae_config(folder / "vae")
    tokenizer = folder / "tokenizer"
    if not ((tokenizer / "vocab.json").is_file() and (tokenizer / "merges.txt").is_file()) and not (
            tokenizer / "tokenizer.json").is_file():
        raise ModelError(f"{tokenizer} has no vocab.json + merges.txt (or tokenizer.json); download the model again")


def _check_vae_config(vae_dir: Path) -> bool:
    """Validate a VAE folder; returns True when it is a TAESD (AutoencoderTiny)."""
    config = _read_json(vae_dir / "config.json", f"VAE folder {vae_dir}")
    kind = config.get("_class_name")
    if kind not in ("AutoencoderKL", "AutoencoderTiny"):
        raise ModelError(f"{vae_dir} is a {kind or 'unknown model'}, not a VAE; pass an AutoencoderKL or TAESD folder")
    if config.get("latent_channels", 4) != 4:
        raise ModelError(f"{vae_dir} has {config['latent_channels']} latent channels; SD 1.x / 2.x VAEs have 4")
    return kind == "AutoencoderTiny"


def read_noise_schedule(folder: Path) -> NoiseScheduleConfig:
    """The training noise schedule in `folder`/scheduler/scheduler_config.json (a diffusers model folder, or the
    config folder shipped for a single-file family), checked: the one reader of that file."""
    path = folder / "scheduler" / "scheduler_config.json"
    if not path.is_file():
        return NoiseScheduleConfig()  # the SD 1.x training schedule
    config = _read_json(path, "the scheduler folder")
    defaults = NoiseScheduleConfig()
    schedule = NoiseScheduleConfig(
        num_train_timesteps=int(config.get("num_train_timesteps", defaults.num_train_timesteps)),
        beta_start=float(config.get("beta_start", defaults.beta_start)),
        beta_end=float(config.get("beta_end", defaults.beta_end)),
        beta_schedule=config.get("beta_schedule", defaults.beta_schedule),
        prediction_type=config.get("prediction_type", defaults.prediction_type),
    )
    if schedule.beta_schedule not in ("scaled_linear", "linear"):
        raise ModelError(f"{path}: beta_schedule {schedule.beta_schedule!r} is not supported (scaled_linear, linear)")
    if schedule.prediction_type not in ("epsilon", "v_prediction"):
        raise ModelError(f"{path}: prediction_type {schedule.prediction_type!r} is not supported (epsilon, v_prediction)")
    return schedule


# --- where a name points ----------------------------------------------------------------------------------------


def hf_hub_cache_dir() -> Path:
    """The Hugging Face hub cache as the environment says *now* (huggingface_hub reads it only at import)."""
    for variable in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(variable):
            return Path(os.environ[variable]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    cache_home = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache_home).expanduser() / "huggingface" / "hub"


def _from_hf_cache(repo_id: str, what: str) -> Path:
    """The local snapshot of an HF model id, looked up strictly offline."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    cache = hf_hub_cache_dir()
    try:
        return Path(snapshot_download(repo_id, cache_dir=cache, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, ValueError):
        raise ModelError(
            f"{what} {repo_id!r} is neither a local path nor in the Hugging Face cache at {cache}; download it once with "
            f"`hf download {repo_id}` on a machine with internet, or pass a folder") from None


def _locate(name: str, what: str) -> Path:
    """A user's string as a path: an existing file/folder, else an HF id in the local cache."""
    path = Path(name).expanduser()
    if path.exists():
        return path
    if HF_ID_PATTERN.match(name) and not name.startswith((".", "/")):
        return _from_hf_cache(name, what)
    raise ModelError(f"{what} {name!r} does not exist; {HOW_TO_PASS_A_MODEL}")


def _content_hash(files: list[Path], extra: str = "") -> str:
    """SHA-256 over names, sizes, configs and content of the files; large weights are sampled at fixed offsets.

    Reading all of a multi-GB model on every start would cost seconds; a fine-tune or a different model changes
    (nearly) every weight, so 64 evenly spaced 64 KiB chunks plus the size and header identify it reliably.
    """
    digest = hashlib.sha256(extra.encode())
    for path in files:
        size = path.stat().st_size
        digest.update(f"{path.name}:{size}".encode())
        with path.open("rb") as handle:
            if size <= HASH_SAMPLES * HASH_CHUNK * 4:
                digest.update(handle.read())
                continue
            for i in range(HASH_SAMPLES):
                handle.seek(i * (size - HASH_CHUNK) // (HASH_SAMPLES - 1))
                digest.update(handle.read(HASH_CHUNK))
    return digest.hexdigest()[:32]


def _folder_files(folder: Path) -> list[Path]:
    """Everything in a diffusers folder that changes the numbers: configs, tokenizer files and weights."""
    files = [folder / "model_index.json"]
    for component in (*REQUIRED_COMPONENTS, "scheduler"):
        directory = folder / component
        if directory.is_dir():
            files += sorted(p for p in directory.iterdir() if p.suffix in (".json", ".txt"))
    for component in ("unet", "vae", "text_encoder"):
        files += component_weights(folder / component)
    return files


def resolve_model(spec: ModelSpec) -> ResolvedModel:
    """Check a spec against the files, without touching any device; raises ModelError with one line on failure."""
    if spec.model in TINY_MODELS:
        from engines.tiny import tiny_model_folder

        path = tiny_model_folder(spec.model)
    elif spec.model in SHAPE_MODELS:
        from engines.shape_models import ensure_shape_model

        path = ensure_shape_model(spec.model)
    else:
        path = _locate(spec.model, "model")
    refuse_pickle(path, "model")
    if path.is_file():
        if path.suffix.lower() != ".safetensors":
            raise ModelError(f"model file {path} is not a .safetensors checkpoint; {HOW_TO_PASS_A_MODEL}")
        check_safetensors(path)
        kind, files = "single_file", [path]
    else:
        if not (path / "model_index.json").is_file():
            raise ModelError(
                f"{path} is not a diffusers model folder (no model_index.json); {HOW_TO_PASS_A_MODEL}")
        _check_sd_architecture(path)
        files = _folder_files(path)
        for weights in files:
            if weights.suffix == ".safetensors":
                check_safetensors(weights)
        kind = "folder"

    vae_path, vae_is_tiny = None, False
    if spec.vae is not None:
        if spec.vae in TINY_MODELS:
            from engines.tiny import tiny_vae_folder

            vae_path = tiny_vae_folder(spec.vae)
        elif spec.vae == SHAPE_VAE:
            from engines.shape_models import ensure_shape_model

            vae_path = ensure_shape_model(spec.vae)
        else:
            vae_path = _locate(spec.vae, "VAE")
        refuse_pickle(vae_path, "VAE")
        if not vae_path.is_dir():
            raise ModelError(f"VAE {vae_path} must be a folder with config.json and .safetensors weights")
        vae_is_tiny = _check_vae_config(vae_path)
        vae_weights = component_weights(vae_path)
        for weights in vae_weights:
            check_safetensors(weights)
        files += [vae_path / "config.json", *vae_weights]

    lora_paths = []
    for name in spec.lora:
        lora = Path(name).expanduser()
        if not lora.is_file():
            raise ModelError(f"LoRA {name!r} does not exist; pass the path of a LoRA .safetensors file")
        refuse_pickle(lora, "LoRA")
        if lora.suffix.lower() != ".safetensors":
            raise ModelError(f"LoRA {lora} is not a .safetensors file; pass a LoRA in safetensors format")
        check_safetensors(lora)
        lora_paths.append(lora)
        files.append(lora)

    tokenizer_path = None
    if spec.tokenizer is not None:
        tokenizer_path = Path(spec.tokenizer).expanduser()
        if not tokenizer_path.is_dir():
            raise ModelError(f"tokenizer {spec.tokenizer!r} is not a folder; pass a folder with vocab.json and merges.txt")
        files += sorted(p for p in tokenizer_path.iterdir() if p.suffix in (".json", ".txt"))

    return ResolvedModel(
        kind=kind, path=path, vae_path=vae_path, vae_is_tiny=vae_is_tiny, lora_paths=tuple(lora_paths),
        lora_scale=spec.lora_scale, tokenizer_path=tokenizer_path, content_hash=_content_hash(files, extra=f"lora_scale={spec.lora_scale}"),
    )


# --- loading ----------------------------------------------------------------------------------------------------


def _load_folder(folder: Path, dtype: torch.dtype) -> tuple[Any, Any, Any, Any, NoiseScheduleConfig]:
    with hf_imports():
        from diffusers import AutoencoderKL, AutoencoderTiny, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

    def options(component: str) -> dict[str, Any]:
        return {"use_safetensors": True, "local_files_only": True, "variant": component_variant(folder / component)}

    diffusers_options = {"torch_dtype": dtype, "low_cpu_mem_usage": False}
    unet = UNet2DConditionModel.from_pretrained(folder / "unet", **diffusers_options, **options("unet"))
    vae_class = AutoencoderTiny if _check_vae_config(folder / "vae") else AutoencoderKL  # a folder may ship a TAESD
    vae = vae_class.from_pretrained(folder / "vae", **diffusers_options, **options("vae"))
    text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder", dtype=dtype, **options("text_encoder"))
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
    return unet, vae, text_encoder, tokenizer, read_noise_schedule(folder)


def _load_single_file(resolved: ResolvedModel, device: torch.device, dtype: torch.dtype) -> tuple[Any, ...]:
    from engines.single_file import load_single_file_components

    return load_single_file_components(
        resolved.path, device, dtype, tokenizer_dir=resolved.tokenizer_path, hf_cache_dir=hf_hub_cache_dir())


def _load_vae(resolved: ResolvedModel, dtype: torch.dtype) -> Any:
    with hf_imports():
        from diffusers import AutoencoderKL, AutoencoderTiny

    vae_class = AutoencoderTiny if resolved.vae_is_tiny else AutoencoderKL
    return vae_class.from_pretrained(
        resolved.vae_path, torch_dtype=dtype, use_safetensors=True, local_files_only=True, low_cpu_mem_usage=False,
        variant=component_variant(resolved.vae_path))


def _fuse_loras(resolved: ResolvedModel, unet: Any, text_encoder: Any) -> None:
    from engines.lora import fuse_lora

    for lora in resolved.lora_paths:
        fuse_lora(unet, text_encoder, lora, resolved.lora_scale)


def own_weight_memory(module: torch.nn.Module) -> None:
    """Copy every weight into memory of its own, so none stays a view of the memory-mapped safetensors file.

    diffusers and transformers assign the loaded tensors when the file's dtype is the model's (fp32 files on the
    CPU), so the weights stay pages of the file's mapping: 4 KiB page-cache pages that the kernel may drop and
    fault in again, where a copy gets the allocator's aligned, huge-page-backed memory. A UNet call read its weights
    10-50% slower from the mapping (issue 14); the reference implementation's loader copies them. Costs one copy of
    the weights at load time; on GPUs moving them to the device already copies.
    """
    import torch

    with torch.no_grad():
        for tensor in (*module.parameters(), *module.buffers()):
            tensor.data = tensor.data.clone()


def load_components(spec: ModelSpec, device: torch.device | str, dtype: torch.dtype) -> DiffusionComponents:
    """Resolve and load a model for inference: eval mode, no grads, on `device` in `dtype`, strictly offline."""
    import torch

    resolved = resolve_model(spec)
    device = torch.device(device)
    if resolved.kind == "single_file":
        unet, vae, text_encoder, tokenizer, schedule = _load_single_file(resolved, device, dtype)
    else:
        unet, vae, text_encoder, tokenizer, schedule = _load_folder(resolved.path, dtype)
    if resolved.vae_path is not None:
        vae = _load_vae(resolved, dtype)
    if resolved.lora_paths:
        _fuse_loras(resolved, unet, text_encoder)
    for module in (unet, vae, text_encoder):  # already in `dtype`: casting after loading would undo fp32 islands
        module.to(device).eval().requires_grad_(False)
        if device.type == "cpu":
            own_weight_memory(module)
    return DiffusionComponents(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                               noise_schedule=schedule, content_hash=resolved.content_hash)
