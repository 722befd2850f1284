"""Specs of `Schedule`: the per-slot coefficients agree with diffusers' LCMScheduler, which core does not use."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import LCMScheduler

from core.config import StreamConfig
from core.schedule import (
    Schedule,
    alphas_cumprod,
    consistency_scalings,
    consistency_step,
    epsilon_from_output,
    lcm_timesteps,
)
from engines.base import NoiseScheduleConfig

pytestmark = pytest.mark.timeout(60)

NOISE = NoiseScheduleConfig()


def lcm_scheduler() -> LCMScheduler:
    scheduler = LCMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        original_inference_steps=50, timestep_scaling=10.0,
    )
    scheduler.set_timesteps(50)
    return scheduler


def test_grid_runs_from_999_down_to_19_in_steps_of_20():
    grid = lcm_timesteps(50, 1000)
    assert grid[0] == 999 and grid[1] == 979 and grid[-1] == 19 and len(grid) == 50
    assert np.array_equal(grid, lcm_scheduler().timesteps.numpy())


def test_alphas_cumprod_match_the_training_schedule_of_diffusers():
    np.testing.assert_allclose(alphas_cumprod(NOISE), lcm_scheduler().alphas_cumprod.double().numpy(), rtol=1e-6)


def test_linear_beta_schedule_is_supported():
    linear = alphas_cumprod(NoiseScheduleConfig(beta_schedule="linear", beta_start=0.0001, beta_end=0.02))
    assert linear[0] == pytest.approx(1 - 0.0001) and linear[-1] < alphas_cumprod(NOISE)[-1]


def test_boundary_condition_scalings_match_lcm():
    scheduler = lcm_scheduler()
    t = np.array([999, 539, 99, 19, 0])
    c_skip, c_out = consistency_scalings(t)
    for i, timestep in enumerate(t):
        ref_skip, ref_out = scheduler.get_scalings_for_boundary_condition_discrete(int(timestep))
        assert c_skip[i] == pytest.approx(float(ref_skip), rel=1e-6)
        assert c_out[i] == pytest.approx(float(ref_out), rel=1e-6, abs=1e-12)


def test_each_slot_coefficient_is_repeated_once_per_frame():
    config = StreamConfig(t_index_list=(10, 30, 45), frame_buffer_size=2)
    s = Schedule.build(config, NOISE, "cpu", torch.float32)
    assert s.timesteps.tolist() == [799, 399, 99]
    assert s.row_timesteps.tolist() == [799, 799, 399, 399, 99, 99]
    for name in ("alpha_sqrt", "beta_sqrt", "c_skip", "c_out"):
        rows = getattr(s, name)
        assert rows.shape == (6, 1, 1, 1)
        assert torch.equal(rows[0::2], rows[1::2])
    abar = alphas_cumprod(NOISE)[[799, 399, 99]]
    torch.testing.assert_close(s.alpha_sqrt[::2].flatten(), torch.tensor(np.sqrt(abar), dtype=torch.float32))
    torch.testing.assert_close(s.alpha_sqrt**2 + s.beta_sqrt**2, torch.ones(6, 1, 1, 1))
    assert s.slot_rows(1) == slice(2, 6) and s.slot_rows(0, 2) == slice(0, 4)


def test_consistency_step_gives_the_denoised_sample_of_lcm():
    scheduler = lcm_scheduler()
    config = StreamConfig(t_index_list=(20,))
    s = Schedule.build(config, NOISE, "cpu", torch.float32)
    generator = torch.Generator().manual_seed(0)
    x_t, eps = torch.randn(2, 1, 4, 8, 8, generator=generator)
    reference = scheduler.step(eps, int(s.timesteps[0]), x_t, generator=generator).denoised
    torch.testing.assert_close(consistency_step(eps, x_t, s), reference, rtol=1e-5, atol=1e-5)


def test_v_prediction_output_converts_to_the_noise_it_encodes():
    s = Schedule.build(StreamConfig(t_index_list=(5, 25)), NOISE, "cpu", torch.float64)
    x0, noise = torch.randn(2, 2, 4, 8, 8, dtype=torch.float64)
    x_t = s.alpha_sqrt * x0 + s.beta_sqrt * noise
    v = s.alpha_sqrt * noise - s.beta_sqrt * x0
    torch.testing.assert_close(epsilon_from_output(v, x_t, s.alpha_sqrt, s.beta_sqrt, "v_prediction"), noise)
    assert epsilon_from_output(v, x_t, s.alpha_sqrt, s.beta_sqrt, "epsilon") is v
