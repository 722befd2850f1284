"""Specs of `PromptCache` and `PromptSwitcher`, on the real tiny text encoder (its calls recorded)."""
from __future__ import annotations

import threading

import pytest
import torch

from core.prompts import ENCODE_CHUNK, PromptCache, PromptSwitcher
from tests.engine_doubles import RecordingEngine

pytestmark = pytest.mark.timeout(300)  # the session's tiny engine may be built in the first test: slow when loaded


@pytest.fixture
def encoder(tiny_engine) -> RecordingEngine:
    return RecordingEngine(tiny_engine)


def texts_encoded(encoder: RecordingEngine) -> list[str]:
    return [text for batch in encoder.prompt_batches for text in batch]


def test_each_text_is_encoded_once_and_a_hit_never_calls_the_encoder(encoder):
    cache = PromptCache(encoder.encode_prompt)
    first = cache.get("anime style")
    calls = len(encoder.prompt_batches)
    again = [cache.get("anime style") for _ in range(5)]
    assert len(encoder.prompt_batches) == calls == 1
    assert all(e is first for e in again)
    assert (cache.hits, cache.misses) == (5, 1)


def test_cached_embeddings_equal_a_direct_encode(encoder, tiny_engine):
    cache = PromptCache(encoder.encode_prompt)
    embedding = cache.get("oil painting")
    assert embedding.shape == (1, 77, 128)
    torch.testing.assert_close(embedding, tiny_engine.encode_prompt(["oil painting"]))


def test_prefill_encodes_each_miss_once_in_batches(encoder):
    cache = PromptCache(encoder.encode_prompt)
    cache.get("sketch")
    assert cache.prefill(["sketch", "neon city", "watercolor", "neon city"]) == 3
    assert encoder.prompt_batches == [["sketch"], ["neon city", "watercolor"]]
    assert len(cache) == 3 and "watercolor" in cache


def test_prefill_encodes_in_bounded_chunks_and_only_up_to_the_capacity(encoder):
    cache = PromptCache(encoder.encode_prompt, capacity=40)
    texts = [f"style {i}" for i in range(100)]
    assert cache.prefill(texts) == 40
    assert max(len(batch) for batch in encoder.prompt_batches) <= ENCODE_CHUNK
    assert texts_encoded(encoder) == texts[:40], "the first texts (a preset's first prompts) are encoded ahead"
    assert len(cache) == 40
    cache.get("style 70")  # the rest are encoded on first use
    assert texts_encoded(encoder)[-1] == "style 70"


def test_asking_for_more_texts_than_the_capacity_returns_every_embedding(encoder):
    cache = PromptCache(encoder.encode_prompt, capacity=3)
    cache.get("kept")
    texts = ["kept"] + [f"style {i}" for i in range(2 * ENCODE_CHUNK)]
    embeddings = cache.get_many(texts)
    assert len(embeddings) == len(texts) and all(e.shape == (1, 77, 128) for e in embeddings)
    assert len(cache) == 3
    assert max(len(batch) for batch in encoder.prompt_batches) <= ENCODE_CHUNK


def test_least_recently_used_text_is_evicted_at_capacity(encoder):
    cache = PromptCache(encoder.encode_prompt, capacity=2)
    cache.get("a")
    cache.get("b")
    cache.get("a")  # "b" is now the least recently used
    cache.get("c")
    assert "a" in cache and "c" in cache and "b" not in cache
    cache.get("b")
    assert texts_encoded(encoder) == ["a", "b", "c", "b"]


def test_threads_asking_for_the_same_new_text_encode_it_once(encoder):
    cache = PromptCache(encoder.encode_prompt)
    results: list[torch.Tensor] = []
    threads = [threading.Thread(target=lambda: results.append(cache.get("stained glass"))) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert texts_encoded(encoder) == ["stained glass"] and all(r is results[0] for r in results)


def test_capacity_below_one_is_refused(encoder):
    with pytest.raises(ValueError, match="at least 1"):
        PromptCache(encoder.encode_prompt, capacity=0)


def make_switcher(encoder: RecordingEngine) -> tuple[PromptCache, PromptSwitcher]:
    cache = PromptCache(encoder.encode_prompt)
    return cache, PromptSwitcher(cache, negative_prompt="blurry", prompt="photo")


def test_prompt_switch_applies_at_next_frame_boundary(encoder):
    cache, switcher = make_switcher(encoder)
    before = switcher.frame_embeddings()
    switcher.switch("anime")
    assert switcher.text == "photo"  # nothing changes between boundaries
    after = switcher.frame_embeddings()
    assert torch.equal(before.cond, cache.get("photo")) and torch.equal(after.cond, cache.get("anime"))
    assert torch.equal(after.uncond, cache.get("blurry"))
    assert after.version != before.version and switcher.text == "anime"


def test_version_changes_only_when_an_embedding_changes(encoder):
    _, switcher = make_switcher(encoder)
    versions = {switcher.frame_embeddings().version for _ in range(5)}
    switcher.switch("photo")  # the same text again changes nothing
    versions.add(switcher.frame_embeddings().version)
    assert len(versions) == 1
    switcher.switch("anime")
    assert switcher.frame_embeddings().version not in versions


def test_switch_encodes_on_the_calling_thread_before_queueing(encoder):
    _, switcher = make_switcher(encoder)
    caller = threading.Thread(target=switcher.switch, args=("cyberpunk city",))
    caller.start()
    caller.join()
    assert encoder.prompt_threads[-1] == caller.ident != threading.get_ident()
    encodes = len(encoder.prompt_batches)
    switcher.frame_embeddings()
    assert len(encoder.prompt_batches) == encodes  # the boundary itself never encodes


def test_a_newer_switch_before_the_boundary_replaces_the_older(encoder):
    cache, switcher = make_switcher(encoder)
    switcher.switch("anime")
    switcher.switch("sketch")
    assert torch.equal(switcher.frame_embeddings().cond, cache.get("sketch"))


def test_blend_moves_monotonically_from_old_to_new_over_n_frames(encoder):
    cache, switcher = make_switcher(encoder)
    old, new = cache.get("photo"), cache.get("anime")
    switcher.switch("anime", blend_frames=4)
    frames = [switcher.frame_embeddings() for _ in range(6)]
    for k, frame in enumerate(frames[:4], start=1):  # frame k of N uses weight k / N
        torch.testing.assert_close(frame.cond, torch.lerp(old, new, k / 4))
    distances = [float((f.cond - new).norm()) for f in frames[:4]]
    assert all(a > b for a, b in zip(distances, distances[1:]))
    assert torch.equal(frames[3].cond, new) and torch.equal(frames[5].cond, new)
    assert len({f.version for f in frames[:4]}) == 4 and frames[3].version == frames[5].version
    assert not switcher.blending


def test_a_switch_mid_blend_starts_from_the_embedding_on_screen(encoder):
    cache, switcher = make_switcher(encoder)
    switcher.switch("anime", blend_frames=2)
    shown = switcher.frame_embeddings().cond  # halfway photo -> anime
    switcher.switch("sketch", blend_frames=2)
    torch.testing.assert_close(switcher.frame_embeddings().cond, torch.lerp(shown, cache.get("sketch"), 0.5))


def test_negative_prompt_change_applies_at_next_frame_boundary(encoder):
    cache, switcher = make_switcher(encoder)
    before = switcher.frame_embeddings()
    switcher.set_negative_prompt("low quality")
    assert torch.equal(switcher.frame_embeddings().uncond, cache.get("low quality"))
    assert switcher.frame_embeddings().version != before.version and switcher.negative_prompt == "low quality"


def test_negative_blend_length_is_refused(encoder):
    _, switcher = make_switcher(encoder)
    with pytest.raises(ValueError, match="blend_frames"):
        switcher.switch("anime", blend_frames=-1)
