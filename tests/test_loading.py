"""Offline model loading: every way to name a model resolves to the same files, and every bad model is refused
up front with one line that says what was expected and how to get it."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from engines.base import EngineShapes, ModelError
from engines.factory import create_engine
from engines.loading import ModelSpec, hf_hub_cache_dir, load_components, resolve_model
from engines.testmodel import TinyModelPaths

pytestmark = pytest.mark.timeout(120)

SHAPES = EngineShapes(width=64, height=64, frame_batch=1, unet_batch=1)
SNAPSHOT = "0123456789abcdef0123456789abcdef01234567"


def model_variant(source: Path, target: Path, drop: tuple[str, ...] = (), copy: tuple[str, ...] = ()) -> Path:
    """A model folder that links to `source`'s components, minus `drop`, with `copy` as real editable copies."""
    target.mkdir(parents=True)
    for entry in source.iterdir():
        if entry.name in drop:
            continue
        if entry.name in copy:
            (shutil.copytree if entry.is_dir() else shutil.copy)(entry, target / entry.name)
        else:
            (target / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    return target


def edit_json(path: Path, **changes: object) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def refusal(spec: ModelSpec) -> str:
    """The ModelError message for `spec`, checked to be a single line."""
    with pytest.raises(ModelError) as caught:
        resolve_model(spec)
    message = str(caught.value)
    assert "\n" not in message and message.strip() == message
    return message


@pytest.fixture
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face hub cache selected through HF_HUB_CACHE, offline; the environment is restored after."""
    cache = tmp_path / "hf-hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def put_in_hf_cache(cache: Path, repo_id: str, model_dir: Path) -> Path:
    """Lay a model out as huggingface_hub does: content-named blobs, a snapshot of symlinks to them, refs/main."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / SNAPSHOT
    for file in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        blob = repo / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(file, blob)
        link = snapshot / file.relative_to(model_dir)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(blob)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(SNAPSHOT)
    return snapshot


def test_tiny_random_name_builds_the_seed_zero_model_and_loads_it_like_any_folder(
        tiny_model_dir: TinyModelPaths, isolated_home: Path) -> None:
    resolved = resolve_model(ModelSpec(model="tiny-random"))
    assert resolved.kind == "folder"
    assert resolved.path.is_relative_to(isolated_home)  # built into the (isolated) user cache
    assert resolved.content_hash == resolve_model(ModelSpec(model=str(tiny_model_dir.model_dir))).content_hash
    with_taesd = resolve_model(ModelSpec(model="tiny-random", vae="tiny-random"))
    assert with_taesd.vae_is_tiny and with_taesd.vae_path.is_relative_to(isolated_home)


def test_tiny_name_is_the_shipped_trained_folder_whose_vae_is_a_taesd(isolated_home: Path) -> None:
    from engines.tiny import TRAINED_TINY_MODEL

    resolved = resolve_model(ModelSpec(model="tiny"))
    assert (resolved.kind, resolved.path) == ("folder", TRAINED_TINY_MODEL)  # shipped: nothing built or cached
    assert not (isolated_home / ".cache" / "vcam").exists()
    components = load_components(ModelSpec(model="tiny"), "cpu", torch.float32)
    assert type(components.vae).__name__ == "AutoencoderTiny"  # read from the folder's vae/config.json
    assert all(p.dtype == torch.float32 for p in components.unet.parameters())  # fp16 files, loaded as asked
    own_vae = resolve_model(ModelSpec(model="tiny", vae="tiny"))
    assert own_vae.vae_is_tiny and own_vae.vae_path == TRAINED_TINY_MODEL / "vae"


def test_model_id_in_hf_cache_loads_offline_and_matches_the_folder(
        tiny_model_dir: TinyModelPaths, tiny_engine, hf_cache: Path) -> None:
    snapshot = put_in_hf_cache(hf_cache, "vcam-test/tiny-sd", tiny_model_dir.model_dir)
    assert hf_hub_cache_dir() == hf_cache
    resolved = resolve_model(ModelSpec(model="vcam-test/tiny-sd"))
    assert resolved.path.resolve() == snapshot.resolve()
    engine = create_engine("torch", ModelSpec(model="vcam-test/tiny-sd"), SHAPES, device="cpu")
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    embeddings = tiny_engine.encode_prompt(["a cat"])
    assert torch.equal(engine.encode_prompt(["a cat"]), embeddings)
    assert torch.equal(engine.predict_noise(latents, torch.tensor([500]), embeddings),
                       tiny_engine.predict_noise(latents, torch.tensor([500]), embeddings))


def test_hf_home_locates_the_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert hf_hub_cache_dir() == tmp_path / "hf" / "hub"


def test_model_id_missing_from_hf_cache_names_the_download_command(hf_cache: Path) -> None:
    message = refusal(ModelSpec(model="someone/not-downloaded"))
    assert str(hf_cache) in message and "huggingface-cli download someone/not-downloaded" in message


def test_missing_path_says_what_can_be_passed(tmp_path: Path) -> None:
    message = refusal(ModelSpec(model=str(tmp_path / "nowhere")))
    assert "does not exist" in message and "diffusers folder" in message


@pytest.mark.parametrize("component", ["unet", "vae", "text_encoder", "tokenizer"])
def test_folder_missing_a_component_is_refused(tiny_model_dir: TinyModelPaths, tmp_path: Path, component) -> None:
    folder = model_variant(tiny_model_dir.model_dir, tmp_path / "partial", drop=(component,))
    message = refusal(ModelSpec(model=str(folder)))
    assert component in message and "download the complete model" in message


def test_folder_without_model_index_is_not_a_diffusers_model(tmp_path: Path) -> None:
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text('{"architectures": ["BertModel"]}')
    message = refusal(ModelSpec(model=str(tmp_path / "bert")))
    assert "not a diffusers model folder" in message


def test_truncated_weights_are_refused_before_loading(tiny_model_dir: TinyModelPaths, tmp_path: Path) -> None:
    folder = model_variant(tiny_model_dir.model_dir, tmp_path / "truncated", copy=("unet",))
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    message = refusal(ModelSpec(model=str(folder)))
    assert "truncated or corrupt" in message and "download or convert it again" in message


def test_garbage_safetensors_checkpoint_is_refused(tmp_path: Path) -> None:
    checkpoint = tmp_path / "model.safetensors"
    checkpoint.write_bytes(b"<html>404 not found</html>")
    assert "truncated or corrupt" in refusal(ModelSpec(model=str(checkpoint)))


@pytest.mark.parametrize("suffix", [".ckpt", ".bin", ".pt"])
def test_pickle_checkpoints_are_refused_without_being_opened(tmp_path: Path, suffix: str) -> None:
    checkpoint = tmp_path / f"model{suffix}"
    checkpoint.write_bytes(b"\x80\x04 would run code if unpickled")
    message = refusal(ModelSpec(model=str(checkpoint)))
    assert "pickle" in message and ".safetensors" in message


def test_component_with_only_pickled_weights_is_refused(tiny_model_dir: TinyModelPaths, tmp_path: Path) -> None:
    folder = model_variant(tiny_model_dir.model_dir, tmp_path / "pickled", copy=("vae",))
    weights = folder / "vae" / "diffusion_pytorch_model.safetensors"
    weights.rename(weights.with_name("diffusion_pytorch_model.bin"))
    message = refusal(ModelSpec(model=str(folder)))
    assert "pickled weights" in message and "safetensors" in message


def test_sdxl_folder_is_refused(tiny_model_dir: TinyModelPaths, tmp_path: Path) -> None:
    folder = model_variant(tiny_model_dir.model_dir, tmp_path / "xl", copy=("model_index.json",))
    edit_json(folder / "model_index.json", _class_name="StableDiffusionXLPipeline",
              text_encoder_2=["transformers", "CLIPTextModelWithProjection"])
    assert "SDXL" in refusal(ModelSpec(model=str(folder)))


def test_inpainting_unet_with_nine_input_channels_is_refused(tiny_model_dir: TinyModelPaths, tmp_path: Path) -> None:
    folder = model_variant(tiny_model_dir.model_dir, tmp_path / "inpaint", copy=("unet",))
    edit_json(folder / "unet" / "config.json", in_channels=9)
    message = refusal(ModelSpec(model=str(folder)))
    assert "9 input channels" in message and "4-channel" in message


def test_unet_without_cross_attention_is_refused(tiny_model_dir: TinyModelPaths, tmp_path: Path) -> None:
    folder = model_variant(tiny_model_dir.model_dir, tmp_path / "uncond", copy=("unet",))
    edit_json(folder / "unet" / "config.json", _class_name="UNet2DModel", cross_attention_dim=None)
    assert "text-conditioned" in refusal(ModelSpec(model=str(folder)))


def test_vae_option_must_name_a_vae(tiny_model_dir: TinyModelPaths) -> None:
    message = refusal(ModelSpec(model=str(tiny_model_dir.model_dir), vae=str(tiny_model_dir.model_dir / "unet")))
    assert "not a VAE" in message


def test_missing_lora_file_is_refused(tiny_model_dir: TinyModelPaths, tmp_path: Path) -> None:
    message = refusal(ModelSpec(model=str(tiny_model_dir.model_dir), lora=(str(tmp_path / "style.safetensors"),)))
    assert "LoRA" in message and "does not exist" in message


def test_content_hash_identifies_model_and_vae(tiny_model_dir: TinyModelPaths, tmp_path: Path) -> None:
    folder = str(tiny_model_dir.model_dir)
    plain = resolve_model(ModelSpec(model=folder)).content_hash
    assert resolve_model(ModelSpec(model=folder)).content_hash == plain
    with_taesd = resolve_model(ModelSpec(model=folder, vae=str(tiny_model_dir.taesd_dir)))
    assert with_taesd.vae_is_tiny and with_taesd.content_hash != plain
    retuned = model_variant(tiny_model_dir.model_dir, tmp_path / "retuned", copy=("scheduler",))
    edit_json(retuned / "scheduler" / "scheduler_config.json", prediction_type="v_prediction")
    assert resolve_model(ModelSpec(model=str(retuned))).content_hash != plain


def test_noise_schedule_comes_from_the_scheduler_config(tiny_model_dir: TinyModelPaths, tmp_path: Path) -> None:
    folder = model_variant(tiny_model_dir.model_dir, tmp_path / "vpred", copy=("scheduler",))
    edit_json(folder / "scheduler" / "scheduler_config.json", prediction_type="v_prediction", beta_end=0.02)
    schedule = load_components(ModelSpec(model=str(folder)), "cpu", torch.float32).noise_schedule
    assert (schedule.prediction_type, schedule.beta_end, schedule.beta_schedule) == (
        "v_prediction", 0.02, "scaled_linear")


def test_single_file_checkpoint_loads_through_the_same_entry_point_as_its_folder(
        tiny_model_dir: TinyModelPaths, tiny_engine, tmp_path: Path) -> None:
    from engines.single_file import export_single_file

    checkpoint = export_single_file(tiny_model_dir.model_dir, tmp_path / "tiny.safetensors")
    assert resolve_model(ModelSpec(model=str(checkpoint))).kind == "single_file"
    engine = create_engine("torch", ModelSpec(model=str(checkpoint)), SHAPES, device="cpu")
    embeddings = tiny_engine.encode_prompt(["a cat"])
    torch.testing.assert_close(engine.encode_prompt(["a cat"]), embeddings)
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(engine.predict_noise(latents, torch.tensor([250]), embeddings),
                               tiny_engine.predict_noise(latents, torch.tensor([250]), embeddings))


def test_fp16_only_download_loads_its_variant_weights(tiny_model_dir: TinyModelPaths, tiny_engine, tmp_path) -> None:
    folder = model_variant(tiny_model_dir.model_dir, tmp_path / "fp16-only", copy=("unet",))
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    weights.rename(weights.with_name("diffusion_pytorch_model.fp16.safetensors"))
    engine = create_engine("torch", ModelSpec(model=str(folder)), SHAPES, device="cpu")
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    embeddings = tiny_engine.encode_prompt(["a cat"])
    assert torch.equal(engine.predict_noise(latents, torch.tensor([100]), embeddings),
                       tiny_engine.predict_noise(latents, torch.tensor([100]), embeddings))
