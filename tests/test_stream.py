"""Specs of `DiffusionStream` end to end on the real tiny model at 64x64.

Tests about UNet calls use the TAESD variant (what `--model tiny` runs; cheaper); tests that compare images use
the full tiny VAE, because the random-weight TAESD decodes everything to a saturated constant.

Every engine call is recorded by a wrapper around the real engine, so the tests can look inside each UNet call.
"""
from __future__ import annotations

import threading

import pytest
import torch

from core.config import StreamConfig
from core.prompts import PromptCache, PromptSwitcher
from core.similarity import SimilarityFilter, SimilarityFilterConfig
from core.stream import DiffusionStream
from tests.engine_doubles import RecordingEngine, UNetCall

pytestmark = pytest.mark.timeout(180)

PROMPTS = ("a watercolor painting", "anime style", "neon city at night")
NEGATIVE = "blurry"


@pytest.fixture
def engine(tiny_taesd_engine) -> RecordingEngine:
    return RecordingEngine(tiny_taesd_engine)


@pytest.fixture
def vae_engine(tiny_engine) -> RecordingEngine:
    return RecordingEngine(tiny_engine)


def make_stream(engine, similarity=None, **changes) -> DiffusionStream:
    settings = dict(width=64, height=64, t_index_list=(32, 45), frame_buffer_size=1, guidance="none", prompt=PROMPTS[0])
    config = StreamConfig(**{**settings, **changes, "negative_prompt": NEGATIVE})
    cache = PromptCache(engine.encode_prompt)
    cache.prefill([*PROMPTS, NEGATIVE])
    return DiffusionStream(engine, config, PromptSwitcher(cache, NEGATIVE, config.prompt), similarity)


def images(frames: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.rand(frames, 3, 64, 64, generator=torch.Generator().manual_seed(seed))  # (F, 3, H, W) in [0, 1]


def cond_rows(call: UNetCall, mode: str, rows: int) -> torch.Tensor:
    """The rows of a UNet call that carry the prompt (not the negative prompt)."""
    return call.embeddings[rows:] if mode in ("full", "initialize") else call.embeddings


def prompt_of(rows: torch.Tensor, cache: PromptCache) -> str:
    """Which prompt every row of a call's embeddings equals; fails if the rows mix prompts."""
    matches = [t for t in PROMPTS if all(torch.equal(row, cache.get(t)[0]) for row in rows)]
    assert len(matches) == 1, "the rows of one UNet call mix prompts or match none"
    return matches[0]


def test_process_returns_unit_range_images_with_one_unet_call_per_group(vae_engine):
    engine = vae_engine
    stream = make_stream(engine, frame_buffer_size=2, guidance="self")
    outputs = [stream.process(images(2, seed)) for seed in range(3)]
    assert all(o.shape == (2, 3, 64, 64) and o.min() >= 0 and o.max() <= 1 and o.std() > 0.05 for o in outputs)
    assert stream.unet_calls == len(engine.unet_calls) == 3
    assert stream.last_unet_batch_size == stream.config.unet_batch == 4


def test_stream_output_equals_sequential_img2img_through_the_vae(vae_engine):
    engine = vae_engine
    stream = make_stream(engine)
    s, noise = stream.schedule, stream.batch.noise
    cond = stream.prompts.cache.get(PROMPTS[0])
    inputs = [images(1, seed) for seed in range(3)]
    outputs = [stream.process(x) for x in inputs]
    for k, x in enumerate(inputs[:2]):  # T = 2: output k + 1 is frame k
        latent = engine.encode_images(x * 2 - 1)
        sample = s.alpha_sqrt[0] * latent + s.beta_sqrt[0] * noise[0:1]
        for slot in range(2):
            eps = engine.predict_noise(sample, s.timesteps[slot : slot + 1], cond)
            denoised = s.c_out[slot] * (sample - s.beta_sqrt[slot] * eps) / s.alpha_sqrt[slot] + s.c_skip[slot] * sample
            sample = s.alpha_sqrt[1] * denoised + s.beta_sqrt[1] * noise[1:2]
        expected = ((engine.decode_latents(denoised) + 1) / 2).clamp(0, 1)
        assert expected.std() > 0.05  # a real image, not a saturated constant
        assert (outputs[k + 1] - expected).abs().max() <= 1e-4


@pytest.mark.parametrize(("mode", "batch"), [("none", 4), ("self", 4), ("full", 8), ("initialize", 6)])
def test_prompt_switch_applies_at_next_frame_in_every_guidance_mode(engine, mode, batch):
    stream = make_stream(engine, frame_buffer_size=2, guidance=mode)
    cache = stream.prompts.cache
    stream.process(images(2, 0))
    stream.prompts.switch(PROMPTS[1])
    stream.process(images(2, 1))
    first, second = engine.unet_calls
    assert first.latents.shape[0] == second.latents.shape[0] == batch
    uncond_rows = batch - 4
    assert prompt_of(cond_rows(first, mode, uncond_rows), cache) == PROMPTS[0]
    assert prompt_of(cond_rows(second, mode, uncond_rows), cache) == PROMPTS[1]
    assert all(torch.equal(row, cache.get(NEGATIVE)[0]) for row in second.embeddings[:uncond_rows])


def test_hundred_switches_during_a_run_drop_no_frame_and_never_mix_prompts(engine):
    stream = make_stream(engine, guidance="initialize", frame_buffer_size=2)
    cache, frames_done, switches_done = stream.prompts.cache, threading.Semaphore(0), threading.Event()

    def switch_a_hundred_times() -> None:
        """Two bursts of 50 switches, each racing the stream; after a burst two frames finish, so the second
        one's boundary surely saw the burst's last switch (prompt 1, then prompt 0)."""
        for i in range(100):
            stream.prompts.switch(PROMPTS[i % 3])
            if i % 50 == 49:
                for _ in range(2):
                    frames_done.acquire(timeout=60)
        switches_done.set()

    encodes_before = len(engine.prompt_batches)
    switcher = threading.Thread(target=switch_a_hundred_times)
    switcher.start()
    fed = returned = 0
    while not switches_done.is_set():
        output = stream.process(images(2, fed))
        fed, returned = fed + 1, returned + (output.shape == (2, 3, 64, 64))
        frames_done.release()
    switcher.join()
    assert returned == fed == stream.unet_calls == len(engine.unet_calls)
    seen = {prompt_of(cond_rows(call, "initialize", 2), cache) for call in engine.unet_calls}
    assert {PROMPTS[0], PROMPTS[1]} <= seen  # the switches did land while running
    assert len(engine.prompt_batches) == encodes_before  # every switch was a cache hit: no text encoder call
    assert stream.embedding_builds <= fed  # rebuilt per prompt version, at most once per frame


def test_blend_moves_every_unet_call_monotonically_from_old_to_new_prompt(engine):
    stream = make_stream(engine, guidance="full")
    cache = stream.prompts.cache
    old, new = cache.get(PROMPTS[0]), cache.get(PROMPTS[1])
    stream.process(images())
    stream.prompts.switch(PROMPTS[1], blend_frames=3)
    for seed in range(4):
        stream.process(images(1, seed))
    distances = []
    for call in engine.unet_calls:
        rows = call.embeddings[2:]  # full, T*F = 2: the prompt rows
        assert torch.equal(rows[0], rows[1])  # one embedding per call, even while blending
        distances.append(float((rows[0] - new[0]).norm()))
        torch.testing.assert_close(call.embeddings[:2], cache.get(NEGATIVE).expand(2, -1, -1))
    assert distances[0] == pytest.approx(float((old - new).norm()))
    assert distances[0] > distances[1] > distances[2] > distances[3] == distances[4] == 0.0


def test_embeddings_are_batched_once_per_prompt_not_per_frame(engine):
    stream = make_stream(engine, guidance="self")
    for seed in range(3):
        stream.process(images(1, seed))
    assert stream.embedding_builds == 1
    stream.prompts.switch(PROMPTS[2])
    stream.process(images(1, 3))
    assert stream.embedding_builds == 2


def test_skipped_frame_returns_the_previous_output_without_any_engine_call(engine):
    similarity = SimilarityFilter(SimilarityFilterConfig(enabled=True, threshold=0.5, max_skip=5, seed=0))
    stream = make_stream(engine, similarity=similarity)
    still = images()
    first = stream.process(still)
    calls = engine.calls
    second = stream.process(still)
    assert second is first and engine.calls == calls and stream.skipped_frames == 1


def test_a_prompt_switch_on_a_still_camera_is_never_skipped(engine):
    similarity = SimilarityFilter(SimilarityFilterConfig(enabled=True, threshold=0.5, max_skip=5, seed=0))
    stream = make_stream(engine, similarity=similarity)
    still = images()
    stream.process(still)
    stream.prompts.switch(PROMPTS[1])
    stream.process(still)
    assert stream.unet_calls == 2 and stream.skipped_frames == 0


def test_warmup_fills_the_buffer_even_when_the_filter_would_skip(engine):
    similarity = SimilarityFilter(SimilarityFilterConfig(enabled=True, threshold=0.5, max_skip=5, seed=0))
    stream = make_stream(engine, similarity=similarity, t_index_list=(20, 32, 45))
    output = stream.warmup(torch.full((1, 3, 64, 64), 0.5))
    assert stream.unet_calls == 3 and output.shape == (1, 3, 64, 64)


def test_txt2img_generates_from_seeded_noise_without_encoding_images(vae_engine):
    engine = vae_engine
    stream = make_stream(engine, mode="txt2img", guidance="self")
    outputs = [stream.txt2img() for _ in range(3)]
    assert engine.image_encodes == 0 and stream.unet_calls == 3
    assert all(o.shape == (1, 3, 64, 64) and o.std() > 0.05 for o in outputs)
    assert not torch.equal(outputs[1], outputs[2])  # fresh noise per call
    again = make_stream(engine, mode="txt2img", guidance="self")
    assert torch.equal(again.process(images()), outputs[0])  # reproducible from the seed; camera frames only pace it


def test_guidance_change_keeps_the_buffer_and_a_shape_change_restarts_it(engine):
    stream = make_stream(engine, guidance="self")
    stream.process(images(1, 0))
    buffer = stream.batch.buffer
    stream.with_changes(guidance="full", guidance_scale=2.0)
    assert stream.batch.buffer is buffer and stream.guidance.mode == "full"
    stream.process(images(1, 1))
    assert stream.last_unet_batch_size == 4
    stream.with_changes(t_index_list=(20, 32, 45))
    assert stream.batch.buffer is None and stream.schedule.steps == 3
    stream.process(images(1, 2))
    assert stream.last_unet_batch_size == 6


def test_prompt_in_a_new_config_goes_through_the_switcher(engine):
    stream = make_stream(engine)
    stream.process(images())
    stream.with_changes(prompt=PROMPTS[2])
    stream.process(images())
    assert prompt_of(engine.unet_calls[-1].embeddings, stream.prompts.cache) == PROMPTS[2]


def test_wrong_image_shape_is_refused_with_the_expected_shape(engine):
    stream = make_stream(engine, frame_buffer_size=2)
    with pytest.raises(ValueError, match=r"expected images of shape \(2, 3, 64, 64\)"):
        stream.process(images(1))
