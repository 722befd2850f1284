"""Cross-attention keys and values are projected once per prompt and give the plain UNet's numbers."""
from __future__ import annotations

import pytest
import torch

from engines.base import EngineShapes
from engines.loading import ModelSpec, load_components

SHAPES = EngineShapes(width=64, height=64, frame_batch=1, unet_batch=2)


@pytest.fixture(scope="module")
def engines(tiny_model_dir):
    """The torch engine with and without precomputed K/V, over separately loaded (equal) weights."""
    from engines.torch_engine import TorchEngine

    spec = ModelSpec(model=str(tiny_model_dir.model_dir), vae=str(tiny_model_dir.taesd_dir))
    torch.set_num_threads(2)
    plain = TorchEngine(load_components(spec, "cpu", torch.float32), SHAPES)
    cached = TorchEngine(load_components(spec, "cpu", torch.float32), SHAPES, cross_attention_kv=True)
    return plain, cached


def unet_inputs(seed: int, embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(2, 4, 8, 8, generator=generator), torch.tensor([899, 299]), embeddings


def test_precomputed_keys_and_values_give_the_plain_unet_output(engines) -> None:
    plain, cached = engines
    embeddings = plain.encode_prompt(["a watercolor painting", "cyberpunk city at night"])  # (2, 77, D)
    served_before = cached._cross_kv.served
    for seed in range(3):
        inputs = unet_inputs(seed, embeddings)
        ours, theirs = cached.predict_noise(*inputs), plain.predict_noise(*inputs)
        assert float((ours - theirs).abs().max()) <= 1e-5 and float(theirs.abs().max()) > 1e-2
    layers = len(cached._cross_kv.layers)
    assert layers > 0 and cached._cross_kv.served - served_before == 3 * layers  # every layer used the stored K/V


def test_keys_and_values_are_projected_only_when_the_prompt_changes(engines) -> None:
    _, cached = engines
    first = cached.encode_prompt(["a watercolor painting"]).expand(2, -1, -1)
    second = cached.encode_prompt(["an oil painting of a harbour"]).expand(2, -1, -1)
    kv = cached._cross_kv
    cached.predict_noise(*unet_inputs(0, first))
    start = kv.projections
    for seed in range(3):
        cached.predict_noise(*unet_inputs(seed, first.clone()))  # same prompt, even as a new tensor
    assert kv.projections == start
    cached.predict_noise(*unet_inputs(4, second))
    assert kv.projections == start + 1
    before = cached.predict_noise(*unet_inputs(5, first))
    assert kv.projections == start + 2  # switching back projects the first prompt again
    assert torch.equal(before, cached.predict_noise(*unet_inputs(5, first)))


def test_a_direct_unet_call_with_other_embeddings_computes_its_own_keys_and_values(engines) -> None:
    plain, cached = engines
    embeddings = cached.encode_prompt(["a watercolor painting"]).expand(2, -1, -1)
    other = cached.encode_prompt(["a pencil sketch"]).expand(2, -1, -1).contiguous()
    cached.predict_noise(*unet_inputs(0, embeddings))  # K/V now belong to `embeddings`
    latents, timesteps, _ = unet_inputs(1, other)
    with torch.inference_mode():
        direct = cached._unet(latents, timesteps, encoder_hidden_states=other).sample
    assert float((direct - plain.predict_noise(latents, timesteps, other)).abs().max()) <= 1e-5


def test_a_unet_that_pools_the_prompt_into_its_time_embedding_is_served_but_not_complete(engines) -> None:
    # addition_embed_type "text" reads the embeddings outside cross-attention: an exported UNet graph must take them
    from diffusers import UNet2DConditionModel

    from engines.kv_cache import CrossAttentionKV

    plain, _ = engines
    config = {**plain._unet.config, "addition_embed_type": "text", "addition_embed_type_num_heads": 4}
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(config).eval()
    embeddings = plain.encode_prompt(["a watercolor painting", "cyberpunk city at night"])
    latents, timesteps, _ = unet_inputs(0, embeddings)
    with torch.inference_mode():
        expected = unet(latents, timesteps, encoder_hidden_states=embeddings).sample
        kv = CrossAttentionKV.install(unet)
        kv.update(embeddings)
        served = unet(latents, timesteps, encoder_hidden_states=embeddings).sample
    assert not kv.complete and kv.served > 0
    assert float((served - expected).abs().max()) <= 1e-5
    assert CrossAttentionKV.install(UNet2DConditionModel.from_config(plain._unet.config)).complete
