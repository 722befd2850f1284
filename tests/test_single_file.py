"""Single-file LDM `.safetensors` checkpoints: same numbers as the diffusers folder, offline, one-line refusals."""
from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from engines.base import ModelError
from engines.single_file import (ARCHITECTURES, CONFIGS_DIR, build_empty_components, check_state_fits,
                                 convert_checkpoint, detect_architecture, load_single_file_components, load_tokenizer,
                                 read_checkpoint)
from tests.ldm_export import CONFIG_FILES, architecture_config_from_folder, export_single_file, ldm_state_dict
from engines.testmodel import TinyModelPaths

pytestmark = pytest.mark.timeout(120)

ARCH = {arch.name: arch for arch in ARCHITECTURES}


@pytest.fixture(scope="module")
def tiny_single_file(tiny_model_dir: TinyModelPaths, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_single_file(tiny_model_dir.model_dir, tmp_path_factory.mktemp("single") / "tiny.safetensors")


def _assert_one_line_model_error(error: pytest.ExceptionInfo, *words: str) -> None:
    message = str(error.value)
    assert "\n" not in message
    for word in words:
        assert word in message, message


def _ldm_shapes(context_width: int, text_prefix: str) -> dict[str, tuple[int, ...]]:
    """The key names / shapes detection looks at, without allocating a real model."""
    return {
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, context_width),
        "first_stage_model.encoder.conv_in.weight": (128, 3, 3, 3),
        f"{text_prefix}embeddings.token_embedding.weight": (49408, 768),
    }


# ---------------------------------------------------------------------------------------------- equivalence


def test_single_file_has_ldm_layout(tiny_single_file: Path) -> None:
    keys = read_checkpoint(tiny_single_file).keys()
    assert "model.diffusion_model.input_blocks.0.0.weight" in keys
    assert "model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_k.weight" in keys
    assert "model.diffusion_model.output_blocks.1.1.conv.weight" in keys  # upsampler of a block without attention
    assert "model.diffusion_model.output_blocks.3.2.conv.weight" in keys  # upsampler after a block's attention
    assert "first_stage_model.decoder.up.3.upsample.conv.weight" in keys  # decoder blocks numbered in reverse
    assert read_checkpoint(tiny_single_file)["first_stage_model.encoder.mid.attn_1.q.weight"].ndim == 4
    assert "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight" in keys
    assert all(k.split(".")[0] in ("model", "first_stage_model", "cond_stage_model") for k in keys)


def test_single_file_and_diffusers_folder_give_identical_outputs(tiny_model_dir: TinyModelPaths,
                                                                 tiny_single_file: Path) -> None:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    folder = tiny_model_dir.model_dir
    unet, vae, text_encoder, tokenizer, schedule = load_single_file_components(tiny_single_file, "cpu", torch.float32)
    ref_unet = UNet2DConditionModel.from_pretrained(folder / "unet").eval()
    ref_vae = AutoencoderKL.from_pretrained(folder / "vae").eval()
    ref_text = CLIPTextModel.from_pretrained(folder / "text_encoder").eval()
    ref_tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")

    prompt = ["a watercolor portrait, golden hour"]
    ids = tokenizer(prompt, padding="max_length", max_length=77, return_tensors="pt").input_ids
    ref_ids = ref_tokenizer(prompt, padding="max_length", max_length=77, return_tensors="pt").input_ids
    assert torch.equal(ids, ref_ids)

    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 8, 8, generator=generator)  # (B, 4, h, w): 64x64 images
    images = torch.rand(1, 3, 64, 64, generator=generator) * 2 - 1
    timesteps = torch.tensor([999, 500])
    with torch.no_grad():
        embeddings = text_encoder(ids)[0]
        assert (embeddings - ref_text(ids)[0]).abs().max() < 1e-6
        noise = unet(latents, timesteps, embeddings.expand(2, -1, -1)).sample
        ref_noise = ref_unet(latents, timesteps, embeddings.expand(2, -1, -1)).sample
        assert (noise - ref_noise).abs().max() < 1e-6
        moments = vae.encode(images).latent_dist.mean
        assert (moments - ref_vae.encode(images).latent_dist.mean).abs().max() < 1e-6
        assert (vae.decode(latents).sample - ref_vae.decode(latents).sample).abs().max() < 1e-6
    assert noise.abs().max() > 0  # a real comparison, not two zero tensors
    assert schedule.prediction_type == "epsilon" and schedule.beta_schedule == "scaled_linear"


def test_single_file_weights_are_bit_identical_to_the_diffusers_folder(tiny_model_dir: TinyModelPaths,
                                                                      tiny_single_file: Path) -> None:
    # What the hand-written loader gave before diffusers' from_single_file replaced it: every tensor, exactly.
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    folder = tiny_model_dir.model_dir
    loaded = load_single_file_components(tiny_single_file, "cpu", torch.float32)[:3]
    references = (UNet2DConditionModel.from_pretrained(folder / "unet"), AutoencoderKL.from_pretrained(folder / "vae"),
                  CLIPTextModel.from_pretrained(folder / "text_encoder"))
    for model, reference in zip(loaded, references):
        state, expected = model.state_dict(), reference.state_dict()
        assert state.keys() == expected.keys()
        assert all(torch.equal(state[key], expected[key]) for key in expected), type(model).__name__
        buffers, expected_buffers = dict(model.named_buffers()), dict(reference.named_buffers())
        assert all(torch.equal(buffers[key], expected_buffers[key]) for key in expected_buffers)
        assert not model.training and not any(p.requires_grad for p in model.parameters())


def test_loading_never_opens_a_network_connection(tiny_single_file: Path) -> None:
    script = f"""
import socket, sys
def forbid(event, args):
    if event in ("socket.connect", "socket.getaddrinfo"):
        raise RuntimeError("network access: " + event)
sys.addaudithook(forbid)
import torch
torch.set_flush_denormal(True)
from engines.single_file import load_single_file_components
load_single_file_components({str(tiny_single_file)!r}, "cpu", torch.float32)
print("loaded offline")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=110)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "loaded offline" in result.stdout


def test_bundled_tiny_config_matches_the_test_model_factory(tiny_model_dir: TinyModelPaths, tmp_path: Path) -> None:
    fresh = architecture_config_from_folder(tiny_model_dir.model_dir, tmp_path / "tiny", with_vocabulary=True)
    for name in [*CONFIG_FILES, "tokenizer/vocab.json", "tokenizer/merges.txt", "tokenizer/tokenizer_config.json"]:
        assert (fresh / name).read_bytes() == (CONFIGS_DIR / "tiny" / name).read_bytes(), (
            f"engines/configs/tiny/{name} is out of date: regenerate it with architecture_config_from_folder")


@pytest.mark.parametrize("arch, unet_params, text_params", [("sd15", 859_520_964, 123_060_480),
                                                             ("sd21", 865_910_724, 340_387_840)])
def test_bundled_real_configs_have_the_published_parameter_counts(arch: str, unet_params: int,
                                                                  text_params: int) -> None:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    config_dir = CONFIGS_DIR / arch
    with torch.device("meta"):  # shapes only: no memory for 1.3 B parameters
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(config_dir / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(config_dir / "vae"))
        text = CLIPTextModel(CLIPTextConfig.from_pretrained(config_dir / "text_encoder"))
    count = lambda model: sum(p.numel() for p in model.parameters())  # noqa: E731
    assert (count(unet), count(vae), count(text)) == (unet_params, 83_653_863, text_params)


# ------------------------------------------------------------------------------------------- recognition


def test_detects_sd15_sd21_and_tiny_from_tensor_shapes() -> None:
    assert detect_architecture(_ldm_shapes(768, "cond_stage_model.transformer.text_model.")).name == "sd15"
    assert detect_architecture(_ldm_shapes(1024, "cond_stage_model.model.")).name == "sd21"
    assert detect_architecture(_ldm_shapes(128, "cond_stage_model.transformer.text_model.")).name == "tiny"


def test_sdxl_key_set_gives_one_line_error(tmp_path: Path) -> None:
    sdxl = {
        "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight": torch.zeros(640, 2048),
        "model.diffusion_model.label_emb.0.0.weight": torch.zeros(1280, 2816),
        "conditioner.embedders.1.model.text_projection": torch.zeros(1280, 1280),
        "first_stage_model.encoder.conv_in.weight": torch.zeros(128, 3, 3, 3),
    }
    save_file(sdxl, str(tmp_path / "sdxl.safetensors"))
    with pytest.raises(ModelError) as error:
        load_single_file_components(tmp_path / "sdxl.safetensors", "cpu", torch.float32)
    _assert_one_line_model_error(error, "SDXL", "SD 1.x or SD 2.x")


def test_unknown_context_width_gives_one_line_error() -> None:
    with pytest.raises(ModelError) as error:
        detect_architecture(_ldm_shapes(512, "cond_stage_model.transformer.text_model."))
    _assert_one_line_model_error(error, "cross-attention width 512")


def test_truncated_file_gives_one_line_error(tiny_single_file: Path, tmp_path: Path) -> None:
    data = tiny_single_file.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError) as error:
        load_single_file_components(truncated, "cpu", torch.float32)
    _assert_one_line_model_error(error, "truncated.safetensors", "not a complete .safetensors", "download it again")


def test_checkpoint_missing_a_weight_is_refused_not_randomly_filled(tiny_single_file: Path, tmp_path: Path) -> None:
    state = read_checkpoint(tiny_single_file)
    del state["model.diffusion_model.middle_block.1.proj_in.weight"]
    save_file(state, str(tmp_path / "partial.safetensors"))
    with pytest.raises(ModelError) as error:
        load_single_file_components(tmp_path / "partial.safetensors", "cpu", torch.float32)
    _assert_one_line_model_error(error, "UNet", "1 weights missing", "mid_block.attentions.0.proj_in.weight")


class _RunsCodeWhenUnpickled:
    """A hostile pickle: unpickling it would create a file (as a real exploit would run anything)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("name", ["model.ckpt", "disguised.safetensors"])
def test_pickle_checkpoint_is_refused_without_running_it(tmp_path: Path, name: str) -> None:
    marker = tmp_path / "code-ran"
    (tmp_path / name).write_bytes(pickle.dumps({"state_dict": _RunsCodeWhenUnpickled(marker)}, protocol=2))
    with pytest.raises(ModelError) as error:
        load_single_file_components(tmp_path / name, "cpu", torch.float32)
    _assert_one_line_model_error(error, "pickle", ".safetensors")
    assert not marker.exists()


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(ModelError) as error:
        read_checkpoint(tmp_path / "nowhere.safetensors")
    _assert_one_line_model_error(error, "nowhere.safetensors", "does not exist")


# ---------------------------------------------------------------------------------------------- tokenizer


def _fake_hf_cache(cache: Path, repo_id: str, subfolder: str, vocabulary_from: Path) -> None:
    """The on-disk layout huggingface_hub leaves after a download: refs/main -> snapshots/<commit>/<files>."""
    repo_dir = cache / ("models--" + repo_id.replace("/", "--"))
    commit = "0" * 40
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    target = repo_dir / "snapshots" / commit / subfolder
    target.mkdir(parents=True)
    for name in ("vocab.json", "merges.txt"):
        (target / name).write_bytes((vocabulary_from / name).read_bytes())


@pytest.mark.parametrize("arch, repo_id, subfolder, pad_token", [
    ("sd15", "openai/clip-vit-large-patch14", "", "<|endoftext|>"),
    ("sd21", "stabilityai/sd-turbo", "tokenizer", "!"),
])
def test_real_architecture_takes_its_tokenizer_from_the_local_hf_cache(
        tiny_model_dir: TinyModelPaths, tmp_path: Path, arch: str, repo_id: str, subfolder: str,
        pad_token: str) -> None:
    _fake_hf_cache(tmp_path / "hub", repo_id, subfolder, tiny_model_dir.model_dir / "tokenizer")
    tokenizer = load_tokenizer(ARCH[arch], tmp_path / "model.safetensors", hf_cache_dir=tmp_path / "hub")
    assert tokenizer.pad_token == pad_token  # SD 2.x pads with "!": the bundled settings, not the cache's
    assert tokenizer.model_max_length == 77
    assert len(tokenizer("a cat").input_ids) > 2


def test_tokenizer_next_to_the_checkpoint_wins_over_the_cache(tiny_model_dir: TinyModelPaths, tmp_path: Path) -> None:
    vocabulary = tiny_model_dir.model_dir / "tokenizer"
    (tmp_path / "models" / "tokenizer").mkdir(parents=True)
    for name in ("vocab.json", "merges.txt"):
        (tmp_path / "models" / "tokenizer" / name).write_bytes((vocabulary / name).read_bytes())
    tokenizer = load_tokenizer(ARCH["sd15"], tmp_path / "models" / "model.safetensors",
                               hf_cache_dir=tmp_path / "empty-hub")
    assert tokenizer.convert_tokens_to_ids("<|endoftext|>") == json.loads(
        (vocabulary / "vocab.json").read_text())["<|endoftext|>"]


def test_missing_tokenizer_error_says_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(ModelError) as error:
        load_tokenizer(ARCH["sd21"], tmp_path / "model.safetensors", hf_cache_dir=tmp_path / "empty-hub")
    _assert_one_line_model_error(error, "--tokenizer", "hf download stabilityai/sd-turbo")


def test_tokenizer_folder_without_vocabulary_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelError) as error:
        load_tokenizer(ARCH["sd15"], tmp_path / "model.safetensors", tokenizer_dir=tmp_path)
    _assert_one_line_model_error(error, "--tokenizer", "vocab.json")


# ------------------------------------------------------------------------------------------ prediction type


def test_yaml_next_to_the_file_selects_v_prediction(tiny_single_file: Path, tmp_path: Path) -> None:
    model = tmp_path / "v-model.safetensors"
    model.symlink_to(tiny_single_file)
    (tmp_path / "v-model.yaml").write_text('model:\n  params:\n    parameterization: "v"\n')
    *_, schedule = load_single_file_components(model, "cpu", torch.float32)
    assert schedule.prediction_type == "v_prediction"
    *_, overridden = load_single_file_components(model, "cpu", torch.float32, prediction_type="epsilon")
    assert overridden.prediction_type == "epsilon"


# ------------------------------------------------------------------------------- full-size layouts, no memory


def _open_clip_text_keys(width: int = 1024, layers: int = 24, vocab: int = 49408) -> dict[str, torch.Tensor]:
    """The OpenCLIP ViT-H/14 text tower as SD 2.x files store it (`cond_stage_model.model.*`), as meta tensors."""
    shapes: dict[str, tuple[int, ...]] = {"token_embedding.weight": (vocab, width), "positional_embedding": (77, width),
                                          "ln_final.weight": (width,), "ln_final.bias": (width,),
                                          "text_projection": (width, width), "logit_scale": ()}
    for i in range(layers):
        block = f"transformer.resblocks.{i}."
        shapes.update({block + "ln_1.weight": (width,), block + "ln_1.bias": (width,),
                       block + "attn.in_proj_weight": (3 * width, width), block + "attn.in_proj_bias": (3 * width,),
                       block + "attn.out_proj.weight": (width, width), block + "attn.out_proj.bias": (width,),
                       block + "ln_2.weight": (width,), block + "ln_2.bias": (width,),
                       block + "mlp.c_fc.weight": (4 * width, width), block + "mlp.c_fc.bias": (4 * width,),
                       block + "mlp.c_proj.weight": (width, 4 * width), block + "mlp.c_proj.bias": (width,)})
    return {"cond_stage_model.model." + key: torch.empty(shape, device="meta") for key, shape in shapes.items()}


@pytest.mark.parametrize("arch", ["sd15", "sd21"])
def test_full_size_ldm_checkpoint_converts_onto_the_bundled_architecture(arch: str) -> None:
    """A real SD 1.5 / 2.1 file's key set and shapes (built on the meta device) fill every weight of the bundle."""
    models = build_empty_components(ARCH[arch])
    unet, vae, text = models["unet"], models["vae"], models["text_encoder"]
    text_state = text.state_dict() if arch == "sd15" else {}
    checkpoint = ldm_state_dict(unet.state_dict(), unet.config, vae.state_dict(), vae.config, text_state)
    if arch == "sd21":
        checkpoint.update(_open_clip_text_keys())
    assert "first_stage_model.encoder.mid.attn_1.q.weight" in checkpoint
    assert detect_architecture({key: tuple(value.shape) for key, value in checkpoint.items()}).name == arch
    states = convert_checkpoint(checkpoint, ARCH[arch], text)
    for what, model in models.items():
        check_state_fits(model, states[what], what, f"{arch}.safetensors")  # raises on any gap or wrong shape
