"""Specs of `StreamBatch`: one batched UNet call per group equals T-step sequential img2img (real tiny UNet)."""
from __future__ import annotations

import pytest
import torch

from core.config import StreamConfig
from core.schedule import Schedule
from core.stream_batch import StreamBatch, seeded_noise
from engines.base import NoiseScheduleConfig
from tests.engine_doubles import ConvNoisePredictor

pytestmark = pytest.mark.timeout(120)

LATENT = (4, 8, 8)  # 64x64 images: small keeps the real UNet fast
T_INDEX_LISTS = {1: (35,), 2: (32, 45), 3: (20, 35, 45), 4: (10, 25, 38, 47)}


class Denoiser:
    """A noise predictor with one prompt, as StreamBatch's epsilon predictor; records the batch sizes."""

    def __init__(self, predict_noise, embedding: torch.Tensor, schedule: Schedule) -> None:
        self.predict_noise = predict_noise
        self.schedule = schedule
        self.embedding = embedding  # (1, L, D)
        self.batch_sizes: list[int] = []

    def __call__(self, x_t: torch.Tensor, slot0_noise: torch.Tensor) -> torch.Tensor:
        self.batch_sizes.append(x_t.shape[0])
        rows = x_t.shape[0]
        return self.predict_noise(x_t, self.schedule.row_timesteps, self.embedding.expand(rows, -1, -1))


@pytest.fixture(scope="module")
def tiny_unet(tiny_engine):
    """The real tiny UNet and a prompt embedding from the real tiny text encoder."""
    return tiny_engine.predict_noise, tiny_engine.encode_prompt(["a watercolor painting"])


@pytest.fixture(scope="module")
def conv_unet():
    """The cheap stand-in, for the cases the real UNet would make too slow on 2 shared cores."""
    return ConvNoisePredictor(), torch.linspace(-1, 1, 16 * 8).reshape(1, 16, 8)


def sequential_img2img(predict_noise, schedule: Schedule, embedding, latents, noise, start_slot: int = 0):
    """Plain img2img of one group (F, C, h, w): noise to slot start_slot, then one UNet call per remaining slot,
    re-noising with slot s's fixed noise rows. The reference StreamBatch must reproduce."""
    f = latents.shape[0]
    rows = lambda slot: slice(slot * f, (slot + 1) * f)  # noqa: E731
    x = schedule.alpha_sqrt[rows(start_slot)] * latents + schedule.beta_sqrt[rows(start_slot)] * noise[rows(start_slot)]
    for slot in range(start_slot, schedule.steps):
        t = schedule.row_timesteps[rows(slot)]
        eps = predict_noise(x, t, embedding.expand(f, -1, -1))
        denoised = schedule.c_out[rows(slot)] * (x - schedule.beta_sqrt[rows(slot)] * eps) / schedule.alpha_sqrt[
            rows(slot)
        ] + schedule.c_skip[rows(slot)] * x
        if slot + 1 < schedule.steps:
            nxt = rows(slot + 1)
            x = schedule.alpha_sqrt[nxt] * denoised + schedule.beta_sqrt[nxt] * noise[nxt]
    return denoised


def build(unet, steps: int, frames: int, seed: int = 3):
    predict_noise, embedding = unet
    config = StreamConfig(width=64, height=64, t_index_list=T_INDEX_LISTS[steps], frame_buffer_size=frames, seed=seed)
    schedule = Schedule.build(config, NoiseScheduleConfig(), "cpu", torch.float32)
    denoiser = Denoiser(predict_noise, embedding, schedule)
    return schedule, denoiser, StreamBatch(schedule, LATENT, config.seed, denoiser)


def assert_stream_equals_sequential(unet, steps: int, frames: int) -> None:
    schedule, denoiser, batch = build(unet, steps, frames)
    inputs = frames_of_latents(steps + 1, frames)
    outputs = [batch.step(latents) for latents in inputs]
    for k in range(len(inputs) - (steps - 1)):  # output of call k + T - 1 is frame k
        expected = sequential_img2img(unet[0], schedule, unet[1], inputs[k], batch.noise)
        assert (outputs[k + steps - 1] - expected).abs().max() <= 1e-4
    assert denoiser.batch_sizes == [steps * frames] * len(inputs)  # one UNet call of T*F rows per group


def frames_of_latents(count: int, frames: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(11)
    return [torch.randn(frames, *LATENT, generator=generator) for _ in range(count)]


@pytest.mark.parametrize("frames", [1, 2])
@pytest.mark.parametrize("steps", [1, 2, 3, 4])
def test_stream_batch_output_equals_sequential_img2img_with_the_same_noise(conv_unet, steps, frames):
    assert_stream_equals_sequential(conv_unet, steps, frames)


@pytest.mark.parametrize(("steps", "frames"), [(2, 2), (3, 1)])
def test_stream_batch_on_the_real_tiny_unet_equals_sequential_img2img(tiny_unet, steps, frames):
    assert_stream_equals_sequential(tiny_unet, steps, frames)


@pytest.mark.parametrize("frames", [1, 2])
def test_first_outputs_are_the_first_frame_with_fewer_steps(conv_unet, frames):
    schedule, denoiser, batch = build(conv_unet, 3, frames)
    inputs = frames_of_latents(2, frames)
    outputs = [batch.step(latents) for latents in inputs]
    for j, output in enumerate(outputs):  # call j < T-1: frame 0 denoised from slot T-1-j on
        expected = sequential_img2img(conv_unet[0], schedule, conv_unet[1], inputs[0], batch.noise, 2 - j)
        assert (output - expected).abs().max() <= 1e-4


def test_fixed_noise_depends_only_on_the_seed():
    def noise(seed: int) -> torch.Tensor:
        return seeded_noise((4, *LATENT), seed, "cpu", torch.float32)

    assert torch.equal(noise(5), noise(5)) and not torch.equal(noise(5), noise(6))


def test_each_slot_and_frame_has_its_own_noise(conv_unet):
    _, _, batch = build(conv_unet, 3, 2)
    assert batch.noise.shape == (6, *LATENT)
    flat = batch.noise.flatten(1)
    assert torch.linalg.matrix_rank(flat) == 6  # no two rows equal or proportional


def test_txt2img_is_reproducible_from_the_seed_and_draws_fresh_noise_per_call(conv_unet):
    runs = []
    for _ in range(2):
        _, denoiser, batch = build(conv_unet, 2, 1)
        runs.append([batch.step(None) for _ in range(3)])
    for first, second in zip(*runs):
        assert torch.equal(first, second)
    assert not torch.allclose(runs[0][1], runs[0][2])
    assert torch.isfinite(torch.stack(runs[0])).all()


def test_txt2img_primes_the_buffer_with_re_noised_zeros(conv_unet):
    schedule, _, batch = build(conv_unet, 3, 1)
    captured = []
    batch._predict_epsilon = lambda x_t, noise0: captured.append(x_t) or torch.zeros_like(x_t)
    batch.step(None)
    later = schedule.slot_rows(1)
    torch.testing.assert_close(captured[0][later], schedule.beta_sqrt[later] * batch.noise[later])


def test_reset_primes_the_buffer_again(conv_unet):
    _, _, batch = build(conv_unet, 2, 1)
    inputs = frames_of_latents(3, 1)
    first = batch.step(inputs[0])
    batch.step(inputs[1])
    batch.reset()
    assert torch.equal(batch.step(inputs[0]), first)


def test_wrong_latent_shape_is_refused_with_the_expected_shape(conv_unet):
    _, _, batch = build(conv_unet, 2, 2)
    with pytest.raises(ValueError, match=r"expected latents \(2, 4, 8, 8\)"):
        batch.step(torch.zeros(1, *LATENT))
