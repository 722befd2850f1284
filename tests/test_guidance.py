"""Specs of residual classifier-free guidance: each mode's UNet batch and its closed form, on the real tiny UNet.

The UNet calls are recorded (inputs and outputs) by a wrapper around the real engine, and the guided noise is
recomputed from the recording with the formulas of `core.guidance` written out again here.
"""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from core.config import StreamConfig
from core.guidance import ResidualGuidance
from core.schedule import Schedule
from core.stream_batch import StreamBatch, seeded_noise
from engines.base import NoiseScheduleConfig
from tests.engine_doubles import ConvNoisePredictor, RecordingEngine

pytestmark = pytest.mark.timeout(120)

STEPS, FRAMES = 2, 2
LATENT = (4, 8, 8)
SCALE, DELTA = 1.5, 0.8


@pytest.fixture(scope="module")
def prompt_pair(tiny_engine):
    cond, uncond = tiny_engine.encode_prompt(["a watercolor painting", "blurry"]).split(1)  # (1, L, D) each
    return cond, uncond


def build(engine, mode: str, scale: float = SCALE, frames: int = FRAMES, prompt_pair=None):
    config = StreamConfig(
        t_index_list=(32, 45), frame_buffer_size=frames, guidance=mode, guidance_scale=scale, delta=DELTA
    )
    recording = engine if isinstance(engine, RecordingEngine) else RecordingEngine(engine)
    schedule = Schedule.build(config, recording.noise_schedule, "cpu", torch.float32)
    noise = seeded_noise((STEPS * frames, *LATENT), 4, "cpu", torch.float32)
    guidance = ResidualGuidance(mode, scale, DELTA, schedule, noise, recording.predict_noise)
    guidance.set_embeddings(*prompt_pair)
    return config, schedule, noise, guidance, recording


def latents(frames: int = FRAMES, seed: int = 9) -> torch.Tensor:
    return torch.randn(STEPS * frames, *LATENT, generator=torch.Generator().manual_seed(seed))  # (T*F, C, h, w)


def residual_drift(schedule: Schedule, stock: torch.Tensor, eps: torch.Tensor, frames: int) -> torch.Tensor:
    """(alpha'/beta') R: what slot 1's stock noise carries next step beyond its fixed noise (T = 2), R being the
    residual of slot 0 now, so that S' = n' + (alpha'/beta') R."""
    s, f = schedule, frames
    residual = s.c_out * s.beta_sqrt * (stock - eps) / s.alpha_sqrt + s.c_skip * s.beta_sqrt * stock
    return s.alpha_sqrt[f:] / s.beta_sqrt[f:] * residual[:f]


@pytest.mark.parametrize(("mode", "rows"), [("none", 4), ("self", 4), ("full", 8), ("initialize", 6)])
def test_unet_batch_size_of_each_mode(tiny_engine, prompt_pair, mode, rows):
    config, _, noise, guidance, recording = build(tiny_engine, mode, prompt_pair=prompt_pair)
    guidance.predict(latents(), noise[:FRAMES])
    assert guidance.batch_size == rows == config.unet_batch
    assert [call.latents.shape[0] for call in recording.unet_calls] == [rows]


@pytest.mark.parametrize("mode", ["self", "full", "initialize"])
def test_guidance_scale_of_one_or_less_runs_every_mode_as_none(tiny_engine, prompt_pair, mode):
    _, schedule, noise, guidance, recording = build(tiny_engine, mode, scale=1.0, prompt_pair=prompt_pair)
    x_t = latents()
    eps = guidance.predict(x_t, noise[:FRAMES])
    (call,) = recording.unet_calls
    assert guidance.mode == "none" and call.latents.shape[0] == STEPS * FRAMES
    assert torch.equal(eps, call.output)
    assert torch.equal(call.embeddings, prompt_pair[0].expand(4, -1, -1))


def test_none_uses_the_conditional_prediction_at_each_slot_timestep(tiny_engine, prompt_pair):
    _, schedule, noise, guidance, recording = build(tiny_engine, "none", prompt_pair=prompt_pair)
    x_t = latents()
    eps = guidance.predict(x_t, noise[:FRAMES])
    (call,) = recording.unet_calls
    assert torch.equal(call.latents, x_t) and call.timesteps.tolist() == [359, 359, 99, 99]
    assert torch.equal(eps, call.output)


def test_full_combines_a_real_negative_pass_with_the_conditional_one(tiny_engine, prompt_pair):
    cond, uncond = prompt_pair
    _, _, noise, guidance, recording = build(tiny_engine, "full", prompt_pair=prompt_pair)
    x_t = latents()
    eps = guidance.predict(x_t, noise[:FRAMES])
    (call,) = recording.unet_calls
    assert torch.equal(call.latents, torch.cat([x_t, x_t]))
    assert call.timesteps.tolist() == [359, 359, 99, 99] * 2
    assert torch.equal(call.embeddings[:4], uncond.expand(4, -1, -1))
    assert torch.equal(call.embeddings[4:], cond.expand(4, -1, -1))
    eps_u, eps_c = call.output[:4], call.output[4:]
    torch.testing.assert_close(eps, eps_u + SCALE * (eps_c - eps_u))


def test_self_uses_the_stock_noise_as_negative_and_carries_it_to_the_next_slot(tiny_engine, prompt_pair):
    _, schedule, noise, guidance, recording = build(tiny_engine, "self", prompt_pair=prompt_pair)
    eps_first = guidance.predict(latents(seed=1), noise[:FRAMES])
    stock_first = noise  # slot 0: the new frame's noise; slot 1: the primed buffer's own fixed noise
    eps_c = recording.unet_calls[0].output
    torch.testing.assert_close(eps_first, DELTA * stock_first + SCALE * (eps_c - DELTA * stock_first))

    eps_second = guidance.predict(latents(seed=2), noise[:FRAMES])
    carried = noise[2:] + residual_drift(schedule, stock_first, eps_first, 2)
    stock_second = torch.cat([noise[:2], carried])
    torch.testing.assert_close(guidance.last_stock, stock_second)
    eps_c = recording.unet_calls[1].output
    torch.testing.assert_close(eps_second, DELTA * stock_second + SCALE * (eps_c - DELTA * stock_second))
    assert len(recording.unet_calls) == 2  # no UNet work beyond T*F rows per step


@pytest.mark.parametrize("frames", [1, 2])
def test_initialize_runs_one_negative_pass_for_the_newest_frames(tiny_engine, prompt_pair, frames):
    cond, uncond = prompt_pair
    _, schedule, noise, guidance, recording = build(tiny_engine, "initialize", frames=frames, prompt_pair=prompt_pair)
    f, rows = frames, STEPS * frames
    eps_first = guidance.predict(latents(frames, seed=1), noise[:f])
    x_t = latents(frames, seed=2)
    eps_second = guidance.predict(x_t, noise[:f])
    call = recording.unet_calls[1]
    assert call.latents.shape[0] == (STEPS + 1) * f
    assert torch.equal(call.latents, torch.cat([x_t[:f], x_t]))
    assert torch.equal(call.timesteps, torch.cat([schedule.row_timesteps[:f], schedule.row_timesteps]))
    assert torch.equal(call.embeddings[:f], uncond.expand(f, -1, -1))
    assert torch.equal(call.embeddings[f:], cond.expand(rows, -1, -1))
    stock_first = torch.cat([recording.unet_calls[0].output[:f], noise[f:]])
    carried = noise[f:] + residual_drift(schedule, stock_first, eps_first, f)
    stock = torch.cat([call.output[:f], carried])  # slot 0: its real negative prediction
    torch.testing.assert_close(guidance.last_stock, stock)
    torch.testing.assert_close(eps_second, DELTA * stock + SCALE * (call.output[f:] - DELTA * stock))


def test_v_prediction_models_are_guided_in_noise_space(tiny_engine, prompt_pair):
    v_engine = RecordingEngine(tiny_engine, replace(tiny_engine.noise_schedule, prediction_type="v_prediction"))
    _, schedule, noise, guidance, recording = build(v_engine, "full", prompt_pair=prompt_pair)
    x_t = latents()
    eps = guidance.predict(x_t, noise[:FRAMES])
    v_u, v_c = recording.unet_calls[0].output.split(4)
    eps_u = schedule.alpha_sqrt * v_u + schedule.beta_sqrt * x_t
    eps_c = schedule.alpha_sqrt * v_c + schedule.beta_sqrt * x_t
    torch.testing.assert_close(eps, eps_u + SCALE * (eps_c - eps_u))


def test_prediction_before_embeddings_are_set_is_refused(tiny_engine):
    config = StreamConfig(t_index_list=(32, 45), guidance="self")
    schedule = Schedule.build(config, tiny_engine.noise_schedule, "cpu", torch.float32)
    noise = seeded_noise((2, *LATENT), 4, "cpu", torch.float32)
    guidance = ResidualGuidance("self", 1.2, 1.0, schedule, noise, tiny_engine.predict_noise)
    with pytest.raises(RuntimeError, match="set_embeddings"):
        guidance.predict(noise, noise[:1])


@pytest.mark.parametrize("mode", ["none", "self", "full", "initialize"])
@pytest.mark.parametrize(("steps", "frames"), [(1, 1), (1, 2), (3, 2), (4, 1)])
def test_every_mode_runs_the_stream_batch_for_any_slots_and_frames(mode, steps, frames):
    """Shapes only, on the cheap stand-in UNet: the reference crashes for F > 1 in full / initialize."""
    t_index_list = (10, 25, 38, 47)[-steps:]
    config = StreamConfig(t_index_list=t_index_list, frame_buffer_size=frames, guidance=mode, guidance_scale=1.4)
    schedule = Schedule.build(config, NoiseScheduleConfig(), "cpu", torch.float32)
    unet = ConvNoisePredictor()
    batch_sizes: list[int] = []

    def recorded(latents, timesteps, embeddings):
        batch_sizes.append(latents.shape[0])
        assert timesteps.shape[0] == embeddings.shape[0] == latents.shape[0]
        return unet(latents, timesteps, embeddings)

    noise = seeded_noise((steps * frames, *LATENT), 1, "cpu", torch.float32)
    guidance = ResidualGuidance(mode, 1.4, DELTA, schedule, noise, recorded)
    guidance.set_embeddings(torch.ones(1, 3, 8), torch.zeros(1, 3, 8))
    batch = StreamBatch(schedule, LATENT, 1, guidance.predict)
    outputs = [batch.step(torch.randn(frames, *LATENT)) for _ in range(3)]
    assert all(o.shape == (frames, *LATENT) and torch.isfinite(o).all() for o in outputs)
    assert batch_sizes == [config.unet_batch] * 3
