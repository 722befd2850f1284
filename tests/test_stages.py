"""Specifications of the stage split: stages in sequence are the UNet, and the split balances measured cost."""
from __future__ import annotations

import itertools
import random

import pytest
import torch

from engines.base import ModelError
from engines.loading import ModelSpec, load_components
from engines.stages import StageState, UNetUnits, balanced_cuts, measure_unit_costs, stage_costs


@pytest.fixture(scope="module")
def tiny_unet(tiny_model_dir):
    return load_components(ModelSpec(model=str(tiny_model_dir.model_dir)), "cpu", torch.float32).unet


def unet_inputs(unet, batch: int, height: int, width: int) -> StageState:
    generator = torch.Generator().manual_seed(7)
    latents = torch.randn(batch, 4, height, width, generator=generator)
    timesteps = torch.tensor([999, 499, 259, 19][:batch])
    embeddings = torch.randn(batch, 77, unet.config.cross_attention_dim, generator=generator)
    return StageState.inputs(latents, timesteps, embeddings)


@pytest.mark.parametrize("latent_size", [(32, 32), (18, 26)])  # 18x26 is not a multiple of the up factor 4
@pytest.mark.parametrize("stages", [1, 2, 3])
def test_stages_in_sequence_equal_the_unet_forward_bit_for_bit(tiny_unet, stages, latent_size):
    units = UNetUnits(tiny_unet)
    inputs = unet_inputs(tiny_unet, 2, *latent_size)
    with torch.inference_mode():
        expected = tiny_unet(inputs.sample, inputs.emb, encoder_hidden_states=inputs.context).sample
    boundaries = balanced_cuts([1.0] * len(units), stages)
    state = inputs
    for first, end in zip(boundaries[:-1], boundaries[1:]):
        state = StageState.from_tensors([t.clone() for t in state.tensors()])  # what a receiving rank rebuilds
        state = units.run(state, first, end)
    assert torch.equal(state.sample, expected)


def test_units_are_found_from_the_blocks_of_the_model(tiny_unet):
    names = UNetUnits(tiny_unet).names
    assert names[0] == "embed" and names[-1] == "out" and "mid" in names
    for index in range(len(tiny_unet.down_blocks)):
        assert any(name.startswith(f"down_{index}.") for name in names)
    for index in range(len(tiny_unet.up_blocks)):
        assert any(name.startswith(f"up_{index}.") for name in names)


def test_only_pending_skip_connections_cross_a_cut(tiny_unet):
    units = UNetUnits(tiny_unet)
    state = unet_inputs(tiny_unet, 1, 32, 32)
    pending = []
    for index in range(len(units)):
        state = units.run(state, index, index + 1)
        pending.append(len(state.residuals))
    skips = 1 + sum(len(b.resnets) + (b.downsamplers is not None) for b in tiny_unet.down_blocks)
    assert max(pending) == skips  # every down output is pending after the down path ...
    assert pending[-1] == 0 and pending[-2] == 0  # ... and none is left once the last up layer consumed it
    assert state.sample.shape == (1, 4, 32, 32)


def test_balanced_cuts_minimise_the_most_expensive_stage():
    rng = random.Random(3)
    for _ in range(30):
        costs = [rng.uniform(0.1, 5.0) for _ in range(rng.randint(3, 9))]
        stages = rng.randint(1, len(costs))
        boundaries = balanced_cuts(costs, stages)
        assert boundaries[0] == 0 and boundaries[-1] == len(costs) and len(boundaries) == stages + 1
        assert all(a < b for a, b in zip(boundaries[:-1], boundaries[1:]))
        best = min(max(stage_costs(costs, [0, *cuts, len(costs)]))
                   for cuts in itertools.combinations(range(1, len(costs)), stages - 1))
        assert max(stage_costs(costs, boundaries)) == pytest.approx(best)


def test_more_stages_than_units_is_refused():
    with pytest.raises(ValueError, match="between 1 and 3 stages"):
        balanced_cuts([1.0, 2.0, 3.0], 4)


@pytest.fixture(scope="module")
def trained_tiny_unet():
    from engines.tiny import TRAINED_TINY_MODEL

    return load_components(ModelSpec(model=str(TRAINED_TINY_MODEL)), "cpu", torch.float32).unet


@pytest.mark.parametrize("stages", [2, 3])
def test_split_of_the_tiny_unet_is_balanced_within_20_percent(trained_tiny_unet, stages):
    # `--model tiny` at its 256x256 frames (64x64 latents, batch 2). Its largest unit is ~10 % of the UNet. The
    # random test model's full-resolution attention units are 16 % each, which leaves no slack for a busy machine.
    units = UNetUnits(trained_tiny_unet)
    costs = measure_unit_costs(units, unet_inputs(trained_tiny_unet, 2, 64, 64), repeats=5)
    per_stage = stage_costs(costs, balanced_cuts(costs, stages))
    assert max(per_stage) <= 1.2 * sum(per_stage) / stages, per_stage


def test_a_unet_with_class_conditioning_is_refused_in_one_line(tiny_unet):
    from diffusers import UNet2DConditionModel

    config = {**tiny_unet.config, "class_embed_type": "timestep"}
    other = UNet2DConditionModel.from_config(config)
    with pytest.raises(ModelError, match="run it on one device"):
        UNetUnits(other)


@pytest.mark.parametrize("stages", [1, 3])
def test_a_unet_that_adds_the_pooled_prompt_to_its_time_embedding_splits_exactly(tiny_unet, stages):
    # addition_embed_type="text" (and FiLM resnets, resnet_time_scale_shift="scale_shift") need only the prompt
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    other = UNet2DConditionModel.from_config({**tiny_unet.config, "addition_embed_type": "text",
                                              "addition_embed_type_num_heads": 4,
                                              "resnet_time_scale_shift": "scale_shift"}).eval()
    units = UNetUnits(other)
    inputs = unet_inputs(other, 2, 32, 32)
    with torch.inference_mode():
        expected = other(inputs.sample, inputs.emb, encoder_hidden_states=inputs.context).sample
        without_prompt = other(inputs.sample, inputs.emb, encoder_hidden_states=inputs.context.flip(0)).sample
    state = inputs
    boundaries = balanced_cuts([1.0] * len(units), stages)
    for first, end in zip(boundaries[:-1], boundaries[1:]):
        state = units.run(StageState.from_tensors([t.clone() for t in state.tensors()]), first, end)
    assert torch.equal(state.sample, expected)
    assert not torch.allclose(expected, without_prompt)  # the prompt does reach the output
