"""Specs of guidance, prompt switching and reconfiguration with ddim / dpmsolver++ (real tiny model at 64x64)."""
from __future__ import annotations

import pytest
import torch

from core.config import ConfigError
from core.guidance import ResidualGuidance
from core.prompts import PromptCache, PromptSwitcher
from core.schedule import Schedule
from core.stream import DiffusionStream
from core.stream_batch import StreamBatch
from tests.engine_doubles import ConvNoisePredictor, RecordingEngine
from tests.test_dpm_solver import LATENT, NOISE, diffusers_sequential, frames_of_latents, solver_config

pytestmark = pytest.mark.timeout(600)

PROMPTS = ("a watercolor painting", "anime style")
NEGATIVE = "blurry"
SCALE = 7.0  # a usual CFG scale for non-distilled models


@pytest.fixture(scope="module")
def prompt_pair(tiny_engine):
    cond, uncond = tiny_engine.encode_prompt([PROMPTS[0], NEGATIVE]).split(1)  # (1, L, D) each
    return cond, uncond


@pytest.mark.parametrize(("scheduler", "order", "unet"), [("dpmsolver++", 2, "real"), ("dpmsolver++", 3, "conv"),
                                                          ("ddim", 1, "conv")])
def test_full_cfg_stream_equals_diffusers_with_classifier_free_guidance(tiny_engine, prompt_pair, scheduler, order,
                                                                        unet):
    config = solver_config(4, 3, order, frames=2, scheduler=scheduler, guidance="full", guidance_scale=SCALE)
    cond, uncond = prompt_pair
    predict_noise = tiny_engine.predict_noise if unet == "real" else ConvNoisePredictor()  # conv: the cheap stand-in
    calls: list[int] = []

    def counted(latents: torch.Tensor, timesteps: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        calls.append(latents.shape[0])
        return predict_noise(latents, timesteps, embeddings)

    schedule = Schedule.build(config, NOISE, "cpu", torch.float32)
    guidance: ResidualGuidance | None = None
    batch = StreamBatch(schedule, LATENT, config.seed, lambda x_t, noise0: guidance.predict(x_t, noise0))
    guidance = ResidualGuidance("full", SCALE, 1.0, schedule, batch.noise, counted)
    guidance.set_embeddings(cond, uncond)
    inputs = frames_of_latents(4, 2)
    outputs = [batch.step(latents) for latents in inputs]

    def cfg_noise(x: torch.Tensor, t: torch.Tensor, cond_rows: torch.Tensor) -> torch.Tensor:
        """Closed form of full CFG: eps = e_u + g (e_c - e_u), as StableDiffusionImg2ImgPipeline computes it."""
        rows = x.shape[0]
        both = predict_noise(torch.cat([x, x]), t.repeat(2), torch.cat([uncond.expand(rows, -1, -1), cond_rows]))
        eps_u, eps_c = both.chunk(2)
        return eps_u + SCALE * (eps_c - eps_u)

    for k in range(2):
        expected = diffusers_sequential(config, (cfg_noise, cond), inputs[k], batch.noise[:2])
        assert (outputs[k + 2] - expected).abs().max() <= 1e-4
    assert calls == [2 * 3 * 2] * 4 == [config.unet_batch] * 4  # one UNet call of 2*T*F rows per group


def make_stream(engine, **changes) -> DiffusionStream:
    config = solver_config(4, 2, 2, frames=2, prompt=PROMPTS[0], negative_prompt=NEGATIVE, **changes)
    cache = PromptCache(engine.encode_prompt)
    cache.prefill([*PROMPTS, NEGATIVE])
    return DiffusionStream(engine, config, PromptSwitcher(cache, NEGATIVE, config.prompt))


def images(frames: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.rand(frames, 3, 64, 64, generator=torch.Generator().manual_seed(seed))  # (F, 3, H, W) in [0, 1]


@pytest.mark.parametrize(("mode", "scale", "rows"), [("none", 7.0, 4), ("full", 7.0, 8), ("self", 1.0, 4),
                                                     ("initialize", 0.5, 4)])
def test_prompt_switch_applies_at_next_frame_with_each_working_guidance_mode(tiny_taesd_engine, mode, scale, rows):
    engine = RecordingEngine(tiny_taesd_engine)
    stream = make_stream(engine, guidance=mode, guidance_scale=scale)
    cache = stream.prompts.cache
    stream.process(images(2, 0))
    stream.prompts.switch(PROMPTS[1])
    stream.process(images(2, 1))
    first, second = engine.unet_calls
    assert first.latents.shape[0] == second.latents.shape[0] == rows == stream.config.unet_batch
    assert torch.equal(first.embeddings[-1], cache.get(PROMPTS[0])[0])
    assert torch.equal(second.embeddings[-1], cache.get(PROMPTS[1])[0])
    if mode == "full":
        assert all(torch.equal(row, cache.get(NEGATIVE)[0]) for row in second.embeddings[:4])


@pytest.mark.parametrize("mode", ["self", "initialize"])
@pytest.mark.parametrize("scheduler", ["ddim", "dpmsolver++"])
def test_residual_guidance_modes_are_refused_naming_a_mode_that_works(mode, scheduler):
    with pytest.raises(ConfigError, match=rf"guidance {mode} works only with scheduler lcm; use guidance full"):
        solver_config(4, 2, scheduler=scheduler, guidance=mode, guidance_scale=1.5)


def test_switching_the_scheduler_restarts_the_buffer_with_the_new_batch(tiny_taesd_engine):
    engine = RecordingEngine(tiny_taesd_engine)
    stream = make_stream(engine, guidance="none")
    stream.process(images())
    stream.with_changes(scheduler="lcm", t_index_list=(32,))
    assert stream.batch.buffer is None and stream.schedule.solver is None
    stream.with_changes(scheduler="dpmsolver++", num_inference_steps=8, strength=0.5)
    stream.process(images(2, 1))
    assert stream.schedule.timesteps.tolist() == [499, 374, 249, 124]
    assert [call.latents.shape[0] for call in engine.unet_calls] == [4, 8]
