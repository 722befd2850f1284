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
    assert str(hf_cache) in message and "hf download someone/not-downloaded" in message


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


def test_unet_needing_sdxl_time_ids_is_refused_and_one_pooling_the_prompt_is_accepted(
        tiny_model_dir: TinyModelPaths, tmp_path: Path) -> None:
    # "text_time" needs SDXL's pooled embeddings and size ids, which vcam never computes; "text" (the shipped tiny
    # model's) pools the prompt embeddings every UNet call is given
    folder = model_variant(tiny_model_dir.model_dir, tmp_path / "time-ids", copy=("unet",))
    edit_json(folder / "unet" / "config.json", addition_embed_type="text_time")
    assert "extra conditioning (text_time" in refusal(ModelSpec(model=str(folder)))
    edit_json(folder / "unet" / "config.json", addition_embed_type="text")
    assert resolve_model(ModelSpec(model=str(folder))).path == folder


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
    from tests.ldm_export import export_single_file

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


# --- only safetensors, sharded or not ---------------------------------------------------------------------------

INDEX_NAMES = {"unet": "diffusion_pytorch_model", "vae": "diffusion_pytorch_model", "text_encoder": "model"}


class RunsCodeWhenUnpickled:
    """A pickle payload: unpickling it creates `marker`, the proof that a pickle loader was reached."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def shard_component(component_dir: Path, shard_suffix: str, payload: bytes | None = None) -> None:
    """Split a component's .safetensors into two shards with a `*.safetensors.index.json`, as big downloads come.

    `shard_suffix=".bin"` writes the shards with torch.save (pickles); `payload` replaces the second shard's bytes.
    """
    from safetensors.torch import load_file, save_file

    [weights] = component_dir.glob("*.safetensors")
    state = load_file(str(weights))
    weights.unlink()
    stem = INDEX_NAMES[component_dir.name]
    names = sorted(state)
    halves = {f"{stem}-0000{i + 1}-of-00002{shard_suffix}": names[i::2] for i in range(2)}
    for shard, keys in halves.items():
        part = {key: state[key].contiguous() for key in keys}
        save_file(part, str(component_dir / shard)) if shard_suffix == ".safetensors" else torch.save(
            part, component_dir / shard)
    if payload is not None:
        (component_dir / list(halves)[1]).write_bytes(payload)
    weight_map = {key: shard for shard, keys in halves.items() for key in keys}
    index = {"metadata": {}, "weight_map": weight_map}
    (component_dir / f"{stem}.safetensors.index.json").write_text(json.dumps(index))


@pytest.mark.parametrize("component", ["unet", "vae", "text_encoder"])
def test_safetensors_index_pointing_at_pickled_shards_is_refused_before_any_loader(
    tiny_model_dir: TinyModelPaths, tmp_path: Path, component: str
) -> None:
    import pickle

    folder = model_variant(tiny_model_dir.model_dir, tmp_path / "bin-shards", copy=(component,))
    marker = tmp_path / "code-ran"
    shard_component(folder / component, ".bin", payload=pickle.dumps(RunsCodeWhenUnpickled(marker)))
    message = refusal(ModelSpec(model=str(folder)))
    assert "00002.bin" in message and "could run code" in message and "convert its weights to .safetensors" in message
    with pytest.raises(ModelError):
        load_components(ModelSpec(model=str(folder)), "cpu", torch.float32)
    assert not marker.exists()


def test_vae_option_whose_index_points_at_pickled_shards_is_refused(
    tiny_model_dir: TinyModelPaths, tmp_path: Path
) -> None:
    vae = tmp_path / "vae"
    shutil.copytree(tiny_model_dir.model_dir / "vae", vae)
    shard_component(vae, ".bin")
    assert "could run code" in refusal(ModelSpec(model=str(tiny_model_dir.model_dir), vae=str(vae)))


def test_index_shard_outside_the_component_folder_is_refused(tiny_model_dir: TinyModelPaths, tmp_path: Path) -> None:
    folder = model_variant(tiny_model_dir.model_dir, tmp_path / "escape", copy=("unet",))
    shard_component(folder / "unet", ".safetensors")
    index = folder / "unet" / "diffusion_pytorch_model.safetensors.index.json"
    data = json.loads(index.read_text())
    data["weight_map"] = {key: f"../vae/{shard}" for key, shard in data["weight_map"].items()}
    index.write_text(json.dumps(data))
    assert "not a .safetensors file in" in refusal(ModelSpec(model=str(folder)))


def test_stray_index_of_another_variant_pointing_at_pickles_is_refused(
    tiny_model_dir: TinyModelPaths, tmp_path: Path
) -> None:
    folder = model_variant(tiny_model_dir.model_dir, tmp_path / "stray", copy=("unet",))
    (folder / "unet" / "diffusion_pytorch_model.fp16.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"conv_in.weight": "diffusion_pytorch_model.fp16.bin"}}))
    assert "fp16.bin" in refusal(ModelSpec(model=str(folder)))


def test_pickle_named_like_a_safetensors_shard_is_refused(tiny_model_dir: TinyModelPaths, tmp_path: Path) -> None:
    import pickle

    folder = model_variant(tiny_model_dir.model_dir, tmp_path / "disguised", copy=("unet",))
    shard_component(folder / "unet", ".safetensors", payload=pickle.dumps(RunsCodeWhenUnpickled(tmp_path / "ran")))
    assert "truncated or corrupt" in refusal(ModelSpec(model=str(folder)))


def test_pickle_named_like_a_safetensors_lora_is_refused(tiny_model_dir: TinyModelPaths, tmp_path: Path) -> None:
    import pickle

    lora = tmp_path / "style.safetensors"
    lora.write_bytes(pickle.dumps(RunsCodeWhenUnpickled(tmp_path / "ran")))
    assert "truncated or corrupt" in refusal(ModelSpec(model=str(tiny_model_dir.model_dir), lora=(str(lora),)))


@pytest.mark.parametrize("component", ["unet", "text_encoder"])
def test_sharded_safetensors_component_loads_and_matches_the_single_file(
    tiny_model_dir: TinyModelPaths, tiny_engine, tmp_path: Path, component: str
) -> None:
    folder = model_variant(tiny_model_dir.model_dir, tmp_path / "sharded", copy=(component,))
    shard_component(folder / component, ".safetensors")
    engine = create_engine("torch", ModelSpec(model=str(folder)), SHAPES, device="cpu")
    embeddings = engine.encode_prompt(["a cat"])
    torch.testing.assert_close(embeddings, tiny_engine.encode_prompt(["a cat"]))
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(engine.predict_noise(latents, torch.tensor([100]), embeddings),
                               tiny_engine.predict_noise(latents, torch.tensor([100]), embeddings))


# --- a torch whose loader is safe by default --------------------------------------------------------------------


@pytest.mark.parametrize("version, safe", [
    ("2.5.1+cu121", False), ("2.1.0", False), ("1.13.1", False), ("2.6.0", True), ("2.6.0a0+git1234", True),
    ("2.13.0+cpu", True), ("3.0.0", True),
])
def test_torch_older_than_2_6_is_named_unsafe_with_the_fix(version: str, safe: bool) -> None:
    from engines.weight_files import torch_loader_problem

    problem = torch_loader_problem(version)
    assert (problem == "") == safe
    if not safe:
        assert version in problem and "pip install 'torch>=2.6'" in problem and "\n" not in problem


def test_pyproject_requires_a_torch_whose_loader_defaults_to_weights_only() -> None:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    from packaging.requirements import Requirement

    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    [torch_requirement] = [Requirement(r) for r in pyproject["project"]["dependencies"] if r.startswith("torch")]
    assert not torch_requirement.specifier.contains("2.5.1") and torch_requirement.specifier.contains("2.6.0")


def test_doctor_says_fail_with_the_fix_for_an_old_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    """An old torch cannot be installed beside this one: its version string is the one thing faked."""
    from vcam import doctor

    monkeypatch.setattr(torch, "__version__", "2.5.1+cu121")
    [check] = [c for c in doctor._torch_and_gpu("auto", "auto") if c.name == "torch"]
    assert check.status == "FAIL" and "pip install 'torch>=2.6'" in check.line()


def test_doctor_passes_the_installed_torch() -> None:
    from vcam import doctor

    [check] = [c for c in doctor._torch_and_gpu("auto", "auto") if c.name == "torch"]
    assert check.status == "OK" and check.line().startswith("OK   torch")
