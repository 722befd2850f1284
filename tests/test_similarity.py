"""Specifications of the stochastic similarity filter (core/similarity.py)."""
from __future__ import annotations

import math

import pytest
import torch

from core.config import ConfigError
from core.similarity import SimilarityFilter, SimilarityFilterConfig, skip_probability

pytestmark = pytest.mark.timeout(60)

SHAPE = (1, 3, 32, 32)  # already at the compare size, so the cosine the filter sees is exactly ours


def unit_pair(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two orthonormal directions in frame space."""
    generator = torch.Generator().manual_seed(seed)
    a = torch.randn(SHAPE, generator=generator, dtype=torch.float64)
    b = torch.randn(SHAPE, generator=generator, dtype=torch.float64)
    a = a / a.norm()
    b = b - (b * a).sum() * a
    return a, b / b.norm()


def at_angle(a: torch.Tensor, b: torch.Tensor, angle: float) -> torch.Tensor:
    """A frame whose cosine with `a` is cos(angle) (and with another such frame, cos of the angle between)."""
    return (math.cos(angle) * a + math.sin(angle) * b).float()


def test_identical_frames_are_skipped_max_skip_times_then_processed():
    frame = torch.rand(SHAPE)
    similarity = SimilarityFilter(SimilarityFilterConfig(enabled=True, threshold=0.5, max_skip=3))
    decisions = [similarity.should_skip(frame.clone()) for _ in range(13)]
    assert decisions == [False] + [True, True, True, False] * 3
    assert (similarity.processed, similarity.skipped) == (4, 9)
    assert similarity.skip_rate == pytest.approx(9 / 13)


def test_half_probability_gives_half_skips_within_a_binomial_bound():
    # threshold 0.9 and cosine 0.95 give p = 0.5; every frame is shown at that cosine from the last processed one
    a, b = unit_pair(1)
    frames = [a.float(), at_angle(a, b, math.acos(0.95))]
    similarity = SimilarityFilter(SimilarityFilterConfig(enabled=True, threshold=0.9, max_skip=10_000, seed=7))
    similarity.should_skip(frames[0])
    reference = 0
    trials = 2000
    for _ in range(trials):
        if not similarity.should_skip(frames[1 - reference]):
            reference = 1 - reference
    rate = similarity.skipped / trials
    assert abs(rate - 0.5) < 4 * math.sqrt(0.25 / trials)  # 4 sigma: ~0.045


def test_same_seed_gives_the_same_decisions_and_does_not_touch_the_global_rng():
    a, b = unit_pair(2)
    frames = [at_angle(a, b, 0.05 * (i % 5)) for i in range(200)]

    def decisions(seed: int) -> list[bool]:
        similarity = SimilarityFilter(SimilarityFilterConfig(enabled=True, threshold=0.99, max_skip=5, seed=seed))
        return [similarity.should_skip(frame) for frame in frames]

    torch.manual_seed(0)
    first = decisions(3)
    torch.manual_seed(123)
    assert decisions(3) == first
    assert decisions(4) != first


def test_never_more_than_max_skip_skips_in_a_row():
    generator = torch.Generator().manual_seed(5)
    base = torch.rand(SHAPE, generator=generator)
    similarity = SimilarityFilter(SimilarityFilterConfig(enabled=True, threshold=0.9, max_skip=4, seed=1))
    longest = streak = 0
    for _ in range(500):
        noisy = base + 0.05 * torch.rand(SHAPE, generator=generator)
        streak = streak + 1 if similarity.should_skip(noisy) else 0
        longest = max(longest, streak)
    assert longest == 4
    assert similarity.skipped > 0


@pytest.mark.parametrize("seed", range(5))
def test_a_clearly_different_frame_is_always_processed(seed):
    generator = torch.Generator().manual_seed(seed)
    still = torch.rand(SHAPE, generator=generator)
    similarity = SimilarityFilter(SimilarityFilterConfig(enabled=True, threshold=0.9, max_skip=50, seed=seed))
    for step in range(200):
        if step % 17 == 16:
            different = torch.rand(SHAPE, generator=generator) - 0.5  # cosine with `still` near 0
            assert similarity.should_skip(different) is False
            assert similarity.last_cosine < 0.9
            assert similarity.should_skip(still) is False  # and coming back is a change too
        else:
            similarity.should_skip(still)


def test_slow_drift_is_compared_with_the_last_processed_frame_and_gets_processed():
    # each frame is only 0.01 rad from the previous one (cos 0.99995, would be skipped almost surely against
    # the last *seen* frame) but drifts away from the last *processed* one until it crosses the threshold
    a, b = unit_pair(3)
    threshold = 0.98
    limit = math.acos(threshold)
    similarity = SimilarityFilter(SimilarityFilterConfig(enabled=True, threshold=threshold, max_skip=10_000, seed=0))
    processed_angle = 0.0
    similarity.should_skip(at_angle(a, b, 0.0))
    processed = 0
    for step in range(1, 150):
        angle = 0.01 * step
        skipped = similarity.should_skip(at_angle(a, b, angle))
        if angle - processed_angle > limit + 1e-3:
            assert not skipped, f"frame {angle - processed_angle:.3f} rad from the last processed one was skipped"
        if not skipped:
            processed_angle = angle
            processed += 1
    assert processed >= int(1.49 / limit)


def test_pixel_noise_on_a_large_static_frame_is_pooled_away_and_skipped():
    generator = torch.Generator().manual_seed(9)
    coarse = torch.rand(1, 3, 8, 8, generator=generator) * 2 - 1
    scene = torch.nn.functional.interpolate(coarse, size=(256, 256), mode="bilinear")  # smooth, like a room
    # full-resolution cosine with this noise is ~0.89 (never skipped); pooled to 32x32 it is ~0.998
    similarity = SimilarityFilter(SimilarityFilterConfig(enabled=True, threshold=0.98, max_skip=10))
    for _ in range(30):
        similarity.should_skip(scene + 0.2 * torch.randn(scene.shape, generator=generator))
    assert similarity.skipped >= 20


@pytest.mark.parametrize("shift", [8, 32])
def test_a_camera_pan_of_a_few_pixels_is_processed(shift):
    # a smooth 256x256 scene in [-1, 1] (the Engine's pixel range) panned by `shift` pixels: the cosine falls
    # well below the default threshold, so the frame is processed with certainty (in [0, 1] an 8-pixel pan
    # keeps a cosine of ~0.98 from the constant offset alone, which is why the filter wants centred pixels)
    generator = torch.Generator().manual_seed(0)
    coarse = torch.rand(1, 3, 12, 12, generator=generator) * 2 - 1
    wide = torch.nn.functional.interpolate(coarse, size=(288, 288), mode="bilinear")
    similarity = SimilarityFilter(SimilarityFilterConfig(enabled=True))
    similarity.should_skip(wide[..., :256, :256])
    assert similarity.should_skip(wide[..., shift:256 + shift, :256]) is False
    assert similarity.last_cosine < 0.9


def test_disabled_filter_never_skips_and_can_be_toggled_at_runtime():
    frame = torch.rand(SHAPE)
    similarity = SimilarityFilter(SimilarityFilterConfig(enabled=False, threshold=0.5, max_skip=10))
    assert not any(similarity.should_skip(frame) for _ in range(20))
    similarity.set_enabled(True)
    assert similarity.should_skip(frame) is True
    similarity.set_enabled(False)
    assert similarity.should_skip(frame) is False
    assert (similarity.processed, similarity.skipped) == (21, 1)


def test_after_enabling_the_filter_compares_with_the_last_frame_processed_while_disabled():
    a, b = unit_pair(3)
    similarity = SimilarityFilter(SimilarityFilterConfig(enabled=False, threshold=0.5, max_skip=10))
    similarity.should_skip(a.float())
    similarity.should_skip(b.float())  # the last processed frame while disabled
    similarity.set_enabled(True)
    assert similarity.should_skip(b.float()) is True  # same as the reference: p = 1
    assert similarity.last_cosine == pytest.approx(1.0)
    assert similarity.should_skip(a.float()) is False  # orthogonal to the reference: always processed


def test_reset_makes_the_next_frame_processed():
    frame = torch.rand(SHAPE)
    similarity = SimilarityFilter(SimilarityFilterConfig(enabled=True, threshold=0.5, max_skip=10))
    similarity.should_skip(frame)
    assert similarity.should_skip(frame) is True
    similarity.reset()
    assert similarity.should_skip(frame) is False


def test_skip_probability_is_zero_at_and_below_threshold_and_one_for_identical():
    assert skip_probability(0.97, 0.98) == 0.0
    assert skip_probability(0.98, 0.98) == 0.0
    assert skip_probability(0.99, 0.98) == pytest.approx(0.5)
    assert skip_probability(1.0, 0.98) == 1.0


@pytest.mark.parametrize("settings", [{"threshold": 1.0}, {"threshold": -0.1}, {"max_skip": -1}])
def test_out_of_range_settings_are_refused_with_a_message(settings):
    with pytest.raises(ConfigError, match="similarity"):
        SimilarityFilterConfig(**settings)
