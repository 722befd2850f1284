"""Specs of ddim / dpmsolver++ in the stream batch: frame k of the stream equals frame k run sequentially through
diffusers' DPMSolverMultistepScheduler / DDIMScheduler (which core does not use).

The real tiny UNet runs a representative case of each kind; the full grid (steps x slots x order x frames) runs on
the cheap convolutional stand-in of tests/engine_doubles.py, because the grid on the real UNet takes over an hour
on 2 shared cores. The solver's arithmetic is per row and the same for both."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

from core.config import ConfigError, StreamConfig
from core.schedule import Schedule
from core.solvers import step_orders
from core.stream_batch import StreamBatch
from engines.base import NoiseScheduleConfig
from tests.engine_doubles import ConvNoisePredictor

pytestmark = pytest.mark.timeout(600)

LATENT = (4, 8, 8)  # 64x64 images: small keeps the real UNet fast
NOISE = NoiseScheduleConfig()


def diffusers_scheduler(config: StreamConfig):
    """The diffusers scheduler our settings name, configured as core documents (trailing spacing, final sigma 0)."""
    common = dict(num_train_timesteps=1000, beta_start=NOISE.beta_start, beta_end=NOISE.beta_end,
                  beta_schedule=NOISE.beta_schedule, prediction_type=NOISE.prediction_type, timestep_spacing="trailing")
    if config.scheduler == "ddim":
        return DDIMScheduler(**common, clip_sample=False, set_alpha_to_one=True)
    return DPMSolverMultistepScheduler(
        **common, algorithm_type="dpmsolver++", solver_order=config.solver_order,
        use_karras_sigmas=config.use_karras_sigmas, lower_order_final=config.lower_order_final,
        final_sigmas_type="zero",
    )


def diffusers_sequential(config: StreamConfig, unet, latents: torch.Tensor | None, noise: torch.Tensor):
    """One group (F, C, h, w) through diffusers the way StableDiffusionImg2ImgPipeline runs it (txt2img when latents
    is None: noise is the starting latent, as with init_noise_sigma 1)."""
    predict_noise, embedding = unet
    scheduler = diffusers_scheduler(config)
    n = config.num_inference_steps
    scheduler.set_timesteps(n)
    t_start = n - config.steps  # StableDiffusionImg2ImgPipeline.get_timesteps
    timesteps = scheduler.timesteps[t_start:]
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(t_start)
    frames = noise.shape[0]
    x = noise if latents is None else scheduler.add_noise(latents, noise, timesteps[:1].repeat(frames))
    for t in timesteps:
        eps = predict_noise(x, t.repeat(frames), embedding.expand(frames, -1, -1))
        x = scheduler.step(eps, t, x).prev_sample
    return x


def stream(config: StreamConfig, unet):
    predict_noise, embedding = unet
    schedule = Schedule.build(config, NOISE, "cpu", torch.float32)
    sizes: list[int] = []

    def predict_epsilon(x_t: torch.Tensor, slot0_noise: torch.Tensor) -> torch.Tensor:
        sizes.append(x_t.shape[0])
        return predict_noise(x_t, schedule.row_timesteps, embedding.expand(x_t.shape[0], -1, -1))

    return StreamBatch(schedule, LATENT, config.seed, predict_epsilon), sizes


def frames_of_latents(count: int, frames: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(11)
    return [torch.randn(frames, *LATENT, generator=generator) for _ in range(count)]


def assert_stream_equals_diffusers(config: StreamConfig, unet, extra_frames: int = 2) -> None:
    batch, sizes = stream(config, unet)
    t = config.steps
    inputs = frames_of_latents(t + extra_frames, config.frame_buffer_size)
    outputs = [batch.step(latents) for latents in inputs]
    for k in range(extra_frames + 1):  # the output of call k + T - 1 is frame k, exact from frame 0 on
        expected = diffusers_sequential(config, unet, inputs[k], batch.noise[: config.frame_buffer_size])
        assert (outputs[k + t - 1] - expected).abs().max() <= 1e-4, f"frame {k}"
    assert sizes == [t * config.frame_buffer_size] * len(inputs)  # one UNet call of T*F rows per group


@pytest.fixture(scope="module")
def tiny_unet(tiny_engine):
    """The real tiny (random-weight) UNet and a prompt embedding from its real text encoder."""
    return tiny_engine.predict_noise, tiny_engine.encode_prompt(["a watercolor painting"])


def solver_config(steps: int, slots: int, order: int = 2, frames: int = 1, **changes) -> StreamConfig:
    settings = dict(width=64, height=64, scheduler="dpmsolver++", num_inference_steps=steps, strength=slots / steps,
                    solver_order=order, frame_buffer_size=frames, guidance="none", seed=3)
    return StreamConfig(**{**settings, **changes})


@pytest.fixture(scope="module")
def conv_unet():
    """The cheap stand-in and a prompt embedding, for the full grid."""
    return ConvNoisePredictor(), torch.linspace(-1, 1, 16 * 8).reshape(1, 16, 8)


@pytest.mark.timeout(1800)  # a few dozen real UNet calls: over 10 minutes at a load of 40 on 2 cores
@pytest.mark.parametrize(("steps", "slots", "order", "frames", "lower_order_final"),
                         [(4, 3, 2, 2, True), (8, 4, 3, 1, False)])  # the second runs orders 1, 2, 3, 1
def test_stream_on_the_real_tiny_unet_equals_diffusers_dpm_solver_pp(tiny_unet, steps, slots, order, frames,
                                                                     lower_order_final):
    config = solver_config(steps, slots, order, frames, lower_order_final=lower_order_final)
    assert_stream_equals_diffusers(config, tiny_unet, extra_frames=1)


def test_ddim_stream_on_the_real_tiny_unet_equals_diffusers_ddim(tiny_unet):
    config = solver_config(4, 3, frames=2, scheduler="ddim")
    assert_stream_equals_diffusers(config, tiny_unet, extra_frames=1)


@pytest.mark.parametrize("frames", [1, 2])
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("slots", [1, 2, 3, 4])
def test_four_step_stream_equals_diffusers_dpm_solver_pp_for_every_order_and_slot_count(conv_unet, slots, order,
                                                                                          frames):
    assert_stream_equals_diffusers(solver_config(4, slots, order, frames), conv_unet)


@pytest.mark.parametrize("frames", [1, 2])
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("slots", [1, 3, 4, 8])
def test_eight_step_stream_equals_diffusers_dpm_solver_pp(conv_unet, slots, order, frames):
    assert_stream_equals_diffusers(solver_config(8, slots, order, frames), conv_unet)


@pytest.mark.parametrize("frames", [1, 2])
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("slots", [2, 4, 20])
def test_twenty_step_stream_equals_diffusers_dpm_solver_pp(conv_unet, slots, order, frames):
    assert_stream_equals_diffusers(solver_config(20, slots, order, frames), conv_unet)


@pytest.mark.parametrize("frames", [1, 2])
@pytest.mark.parametrize(("steps", "slots", "order"), [(4, 4, 2), (8, 3, 3), (20, 4, 2), (20, 20, 3)])
def test_karras_sigmas_stream_equals_diffusers(conv_unet, steps, slots, order, frames):
    assert_stream_equals_diffusers(solver_config(steps, slots, order, frames, use_karras_sigmas=True), conv_unet)


@pytest.mark.parametrize(("steps", "slots", "order"), [(8, 8, 3), (8, 4, 2), (4, 4, 3)])
def test_without_lower_order_final_stream_equals_diffusers(conv_unet, steps, slots, order):
    assert_stream_equals_diffusers(solver_config(steps, slots, order, lower_order_final=False), conv_unet)


@pytest.mark.parametrize("frames", [1, 2])
@pytest.mark.parametrize(("steps", "slots"), [(4, 1), (4, 2), (4, 4), (8, 3), (20, 4), (20, 20)])
def test_ddim_stream_equals_diffusers_ddim(conv_unet, steps, slots, frames):
    config = solver_config(steps, slots, frames=frames, scheduler="ddim", solver_order=3)
    assert config.effective_solver_order == 1
    assert_stream_equals_diffusers(config, conv_unet)


@pytest.mark.parametrize(("steps", "order"), [(4, 2), (8, 3), (20, 3)])
def test_txt2img_stream_equals_diffusers_from_the_same_starting_noise(conv_unet, steps, order):
    config = replace(solver_config(steps, steps, order), mode="txt2img", strength=1.0)
    batch, _ = stream(config, conv_unet)
    outputs = [batch.step(None) for _ in range(steps + 1)]
    fresh = torch.Generator().manual_seed(config.seed + 1)  # StreamBatch's txt2img noise, drawn in call order
    starts = [torch.randn(1, *LATENT, generator=fresh) for _ in range(2)]
    for k, start in enumerate(starts):
        expected = diffusers_sequential(config, conv_unet, None, start)
        assert (outputs[k + steps - 1] - expected).abs().max() <= 1e-4


def test_img2img_runs_the_tail_of_the_schedule_that_strength_selects():
    config = solver_config(10, 6)  # strength 0.6: int(10 * 0.6) = 6 steps, as diffusers' img2img
    schedule = Schedule.build(config, NOISE, "cpu", torch.float32)
    reference = diffusers_scheduler(config)
    reference.set_timesteps(10)
    assert config.steps == 6 and schedule.timesteps.tolist() == reference.timesteps[4:].tolist()
    assert schedule.solver is not None and schedule.solver.orders == (1, 2, 2, 2, 2, 1)


def test_orders_warm_up_and_lower_towards_the_end_like_diffusers():
    assert step_orders(10, 0, 3, lower_order_final=True) == [1, 2, 3, 3, 3, 3, 3, 3, 2, 1]
    assert step_orders(10, 0, 3, lower_order_final=False) == [1, 2, 3, 3, 3, 3, 3, 3, 3, 1]
    assert step_orders(20, 0, 3, lower_order_final=True)[-2:] == [3, 1]  # the rule applies below 15 steps only
    assert step_orders(10, 7, 3, lower_order_final=True) == [1, 2, 1]  # img2img starts without history


def test_solver_settings_out_of_range_are_refused_naming_the_option():
    with pytest.raises(ConfigError, match=r"solver_order \(--solver-order\) must be 1, 2 or 3"):
        solver_config(8, 4, order=4)
    with pytest.raises(ConfigError, match=r"raise strength \(--strength\) or steps \(--steps\)"):
        StreamConfig(scheduler="dpmsolver++", num_inference_steps=4, strength=0.2, guidance="none")
    with pytest.raises(ConfigError, match="scheduler must be one of lcm, ddim, dpmsolver\\+\\+"):
        StreamConfig(scheduler="euler")
