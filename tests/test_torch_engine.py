"""The torch eager engine: the Engine contract's shapes, dtypes and determinism on the tiny model, VAE and TAESD."""
from __future__ import annotations

import pytest
import torch

from engines.base import Engine, EngineShapes, EngineUnavailableError, ModelError
from engines.devices import default_dtype, place, resolve_device
from engines.factory import ENGINE_BUILDERS, create_engine
from engines.loading import ModelSpec
from engines.testmodel import TinyModelPaths

pytestmark = pytest.mark.timeout(120)


def random_images(batch: int, size: int = 256, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_engine_satisfies_the_contract_with_the_model_description(tiny_engine) -> None:
    assert isinstance(tiny_engine, Engine)
    assert tiny_engine.name == "torch"
    assert (tiny_engine.device, tiny_engine.dtype) == (torch.device("cpu"), torch.float32)
    assert (tiny_engine.latent_channels, tiny_engine.vae_scale_factor) == (4, 8)
    assert tiny_engine.noise_schedule.beta_schedule == "scaled_linear"
    assert tiny_engine.noise_schedule.prediction_type == "epsilon"


def test_prompt_is_padded_to_77_tokens_and_encoded_deterministically(tiny_engine) -> None:
    embeddings = tiny_engine.encode_prompt(["a watercolor painting", "a cyberpunk city at night"])
    assert embeddings.shape == (2, 77, 128) and embeddings.dtype == torch.float32
    assert torch.equal(tiny_engine.encode_prompt(["a watercolor painting"])[0], embeddings[0])
    assert not torch.allclose(embeddings[0], embeddings[1])
    long_prompt = ", ".join(["a highly detailed portrait"] * 40)  # far past 77 tokens: truncated, not an error
    assert tiny_engine.encode_prompt([long_prompt]).shape == (1, 77, 128)


def test_image_encoding_is_the_scaled_posterior_mean(tiny_engine, tiny_model_dir: TinyModelPaths) -> None:
    from diffusers import AutoencoderKL

    images = random_images(2, size=64)
    latents = tiny_engine.encode_images(images)
    assert latents.shape == (2, 4, 8, 8) and latents.dtype == torch.float32
    assert torch.equal(tiny_engine.encode_images(images), latents)  # no sampling: same frame, same latent
    vae = AutoencoderKL.from_pretrained(tiny_model_dir.model_dir / "vae", use_safetensors=True)
    with torch.inference_mode():
        expected = vae.encode(images).latent_dist.mean * vae.config.scaling_factor
    torch.testing.assert_close(latents, expected)


def test_decoding_unscales_latents_and_returns_images_in_range(tiny_engine, tiny_model_dir: TinyModelPaths) -> None:
    from diffusers import AutoencoderKL

    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    images = tiny_engine.decode_latents(latents)
    assert images.shape == (1, 3, 64, 64)
    assert images.min() >= -1.0 and images.max() <= 1.0
    vae = AutoencoderKL.from_pretrained(tiny_model_dir.model_dir / "vae", use_safetensors=True)
    with torch.inference_mode():
        expected = vae.decode(latents / vae.config.scaling_factor).sample.clamp(-1, 1)
    torch.testing.assert_close(images, expected)


def test_noise_prediction_of_a_batch_equals_predicting_each_item_alone(tiny_engine) -> None:
    generator = torch.Generator().manual_seed(5)
    latents = torch.randn(2, 4, 16, 16, generator=generator)
    timesteps = torch.tensor([999, 499])
    embeddings = tiny_engine.encode_prompt(["a cat", "a dog"])
    noise = tiny_engine.predict_noise(latents, timesteps, embeddings)
    assert noise.shape == (2, 4, 16, 16) and torch.isfinite(noise).all()
    alone = tiny_engine.predict_noise(latents[1:], timesteps[1:], embeddings[1:])
    torch.testing.assert_close(noise[1:], alone, atol=1e-4, rtol=1e-4)


def test_torch_engine_runs_the_full_256_resolution_it_was_built_for(tiny_engine) -> None:
    latents = tiny_engine.encode_images(random_images(1, size=256))
    assert latents.shape == (1, 4, 32, 32)
    assert tiny_engine.decode_latents(latents).shape == (1, 3, 256, 256)


def test_taesd_latents_are_used_as_they_are_and_round_trip_shapes(
        tiny_taesd_engine, tiny_model_dir: TinyModelPaths) -> None:
    from diffusers import AutoencoderTiny

    images = random_images(2, size=64, seed=7)
    latents = tiny_taesd_engine.encode_images(images)
    assert latents.shape == (2, 4, 8, 8) and tiny_taesd_engine.vae_scale_factor == 8
    taesd = AutoencoderTiny.from_pretrained(tiny_model_dir.taesd_dir, use_safetensors=True)
    with torch.inference_mode():
        torch.testing.assert_close(latents, taesd.encode(images).latents)
    decoded = tiny_taesd_engine.decode_latents(latents)
    assert decoded.shape == (2, 3, 64, 64) and torch.isfinite(decoded).all()


def test_resolution_not_divisible_by_the_vae_factor_is_refused(tiny_model_dir: TinyModelPaths) -> None:
    with pytest.raises(ModelError, match="multiple of 8"):
        create_engine("torch", ModelSpec(model=str(tiny_model_dir.model_dir)),
                      EngineShapes(width=100, height=64, frame_batch=1, unet_batch=1), device="cpu")


def test_unknown_engine_name_lists_the_known_engines(tiny_model_dir: TinyModelPaths) -> None:
    with pytest.raises(EngineUnavailableError) as caught:
        create_engine("warp-drive", ModelSpec(model="tiny"), EngineShapes(64, 64, 1, 1))
    assert "warp-drive" in str(caught.value) and all(name in str(caught.value) for name in ENGINE_BUILDERS)


def test_auto_device_falls_back_to_cpu_in_fp32() -> None:
    placement = place("auto", threads=2)
    if torch.cuda.is_available():
        assert placement.device.type == "cuda" and placement.dtype == torch.float16
    else:
        assert placement.device.type in ("cpu", "mps")
    assert default_dtype(torch.device("cpu")) == torch.float32
    assert default_dtype(torch.device("cuda")) == torch.float16


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_requesting_an_absent_gpu_names_the_fix() -> None:
    with pytest.raises(EngineUnavailableError, match="--device cpu"):
        resolve_device("cuda")


def test_unknown_device_lists_the_choices() -> None:
    with pytest.raises(EngineUnavailableError, match="auto, cuda, mps, cpu"):
        resolve_device("tpu")


def _file_mappings() -> list[tuple[int, int, str]]:
    """(start, end, path) of every file this process has memory-mapped (Linux: /proc/self/maps)."""
    mappings = []
    with open("/proc/self/maps", encoding="utf-8") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].strip().startswith("/"):
                start, end = (int(address, 16) for address in fields[0].split("-"))
                mappings.append((start, end, fields[5].strip()))
    return mappings


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/maps"), reason="reads Linux's /proc/self/maps")
def test_cpu_weights_are_copied_off_the_safetensors_file(tiny_engine) -> None:
    # The tiny model's fp32 files are what diffusers / transformers would leave memory-mapped (no dtype cast copies
    # them); weights read through the file's page-cache mapping made a UNet call slower (issue 14).
    mappings = [m for m in _file_mappings() if m[2].endswith(".safetensors")]
    modules = {"unet": tiny_engine._unet, "vae": tiny_engine._vae, "text_encoder": tiny_engine._text_encoder}
    for name, module in modules.items():
        tensors = [*module.parameters(), *module.buffers()]
        assert tensors, name
        file_backed = [t for t in tensors if any(start <= t.data_ptr() < end for start, end, _ in mappings)]
        assert not file_backed, f"{len(file_backed)} of {len(tensors)} {name} tensors are views of the weight file"
