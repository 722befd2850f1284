"""The tiny random-weight model: deterministic from its seed, the real SD layout, finite non-degenerate outputs."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from engines.testmodel import TINY_MODEL_VERSION, TinyModelPaths, ensure_tiny_model, write_test_model

pytestmark = pytest.mark.timeout(120)

SD_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


def _weight_digests(model_dir: Path) -> dict[str, str]:
    return {
        str(p.relative_to(model_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(model_dir.rglob("*.safetensors"))
    }


def test_same_seed_writes_byte_identical_weights(tiny_model_dir: TinyModelPaths, tmp_path: Path) -> None:
    again = write_test_model(tmp_path / "again", seed=0)
    assert _weight_digests(again) == _weight_digests(tiny_model_dir.model_dir)
    assert (again / "tokenizer" / "merges.txt").read_bytes() == (
        tiny_model_dir.model_dir / "tokenizer" / "merges.txt"
    ).read_bytes()


def test_different_seed_writes_different_weights(tiny_model_dir: TinyModelPaths, tmp_path: Path) -> None:
    other = _weight_digests(write_test_model(tmp_path / "seed1", seed=1))
    base = _weight_digests(tiny_model_dir.model_dir)
    assert other.keys() == base.keys()
    assert all(other[name] != base[name] for name in base)


def test_folder_has_the_stable_diffusion_layout_with_safetensors_only(tiny_model_dir: TinyModelPaths) -> None:
    model_dir = tiny_model_dir.model_dir
    index = json.loads((model_dir / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    for component in SD_COMPONENTS:
        assert (model_dir / component).is_dir()
    assert not [p for p in model_dir.rglob("*") if p.suffix in (".bin", ".ckpt", ".pt", ".pth")]
    scheduler = json.loads((model_dir / "scheduler" / "scheduler_config.json").read_text())
    assert (scheduler["_class_name"], scheduler["beta_schedule"], scheduler["prediction_type"]) == (
        "LCMScheduler", "scaled_linear", "epsilon")
    unet = json.loads((model_dir / "unet" / "config.json").read_text())
    assert (unet["in_channels"], unet["cross_attention_dim"], unet["sample_size"]) == (4, 128, 32)
    assert (tiny_model_dir.taesd_dir / "diffusion_pytorch_model.safetensors").is_file()


def test_tokenizer_turns_real_prompts_into_known_subword_tokens(tiny_model_dir: TinyModelPaths) -> None:
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(tiny_model_dir.model_dir / "tokenizer")
    prompt = "A watercolor painting of a cat, highly detailed! 1990s neon-lit city"
    ids = tokenizer(prompt).input_ids
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    body = ids[1:-1]
    assert tokenizer.eos_token_id not in body  # unk is eos in CLIP: no character fell back to unk
    assert len(body) < len(prompt.replace(" ", "")) / 2  # merges shorten words well below one token per letter
    padded = tokenizer([prompt], padding="max_length", max_length=77, return_tensors="pt").input_ids
    assert padded.shape == (1, 77)


@torch.inference_mode()
def test_random_weights_give_finite_non_degenerate_outputs(tiny_model_dir: TinyModelPaths) -> None:
    from diffusers import AutoencoderKL, AutoencoderTiny, UNet2DConditionModel
    from transformers import CLIPTextModel

    model_dir = tiny_model_dir.model_dir
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 500, (2, 77), generator=generator)
    text = CLIPTextModel.from_pretrained(model_dir / "text_encoder", use_safetensors=True)(tokens).last_hidden_state
    unet = UNet2DConditionModel.from_pretrained(model_dir / "unet", use_safetensors=True)
    noise = unet(torch.randn(2, 4, 32, 32, generator=generator), torch.tensor([999, 400]), text).sample
    image = torch.rand(1, 3, 256, 256, generator=generator) * 2 - 1
    vae = AutoencoderKL.from_pretrained(model_dir / "vae", use_safetensors=True)
    latents = vae.encode(image).latent_dist.mean
    decoded = vae.decode(latents).sample
    taesd = AutoencoderTiny.from_pretrained(tiny_model_dir.taesd_dir, use_safetensors=True)
    tiny_latents = taesd.encode(image).latents
    tiny_decoded = taesd.decode(tiny_latents).sample
    assert (text.shape, noise.shape, latents.shape, decoded.shape) == (
        (2, 77, 128), (2, 4, 32, 32), (1, 4, 32, 32), (1, 3, 256, 256))
    assert (tiny_latents.shape, tiny_decoded.shape) == ((1, 4, 32, 32), (1, 3, 256, 256))
    for output in (text, noise, latents, decoded, tiny_latents, tiny_decoded):
        assert torch.isfinite(output).all()
        assert output.std() > 1e-3  # not collapsed to a constant


def test_ensure_tiny_model_builds_once_and_reuses_the_cache(tmp_path: Path) -> None:
    first = ensure_tiny_model(tmp_path)
    assert first.model_dir == tmp_path / TINY_MODEL_VERSION / "model"
    stamp = (first.model_dir / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns
    second = ensure_tiny_model(tmp_path)
    assert second == first
    assert (second.model_dir / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns == stamp
    assert sorted(p.name for p in tmp_path.iterdir()) == [TINY_MODEL_VERSION]  # no staging folder left behind


def test_written_tokenizer_is_exactly_the_shipped_tokenizer(tmp_path: Path) -> None:
    """The random model's tokenizer is the one shipped in engines/configs/tiny/tokenizer, byte for byte (it was
    trained by hand-written BPE code until the output was shown identical; issue 9)."""
    from engines.testmodel import _write_tokenizer

    shipped = Path(__file__).resolve().parent.parent / "engines" / "configs" / "tiny" / "tokenizer"
    _write_tokenizer(tmp_path)
    names = sorted(p.name for p in shipped.iterdir())
    assert names == sorted(p.name for p in tmp_path.iterdir())
    assert all((tmp_path / name).read_bytes() == (shipped / name).read_bytes() for name in names)
