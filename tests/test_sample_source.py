"""Specification of `--source sample`: a real photograph moved like a hand-held webcam, the same on every run."""
from __future__ import annotations

import time

import numpy as np
import pytest
from skimage.metrics import structural_similarity

from vcam.sample_source import SAMPLE_NAMES, SampleSource
from vcam.sources import SourceConfig, SourceError, open_source

pytestmark = pytest.mark.timeout(120)

SIZE = SourceConfig(width=160, height=96)  # small: the motion is in proportion to the frame, the tests stay fast


def read_n(source, count: int) -> list[np.ndarray]:
    return [source.read() for _ in range(count)]


def grey_ssim(a: np.ndarray, b: np.ndarray) -> float:
    return float(structural_similarity(a.mean(axis=2), b.mean(axis=2), data_range=255.0))


def changed_fraction(a: np.ndarray, b: np.ndarray, levels: int = 40) -> float:
    """Share of pixels whose colour differs by more than `levels` (far above the sensor noise) in some channel."""
    return float((np.abs(a.astype(int) - b.astype(int)).max(axis=2) > levels).mean())


def test_sample_frames_are_the_same_on_every_run_for_a_seed():
    a, b = open_source("sample", SIZE), open_source("sample", SIZE)
    frames_a, frames_b = read_n(a, 8), read_n(b, 8)
    assert a.live is False, "generated as fast as consumed unless an fps is given"
    assert frames_a[0].shape == (96, 160, 3) and frames_a[0].dtype == np.uint8
    assert all(np.array_equal(x, y) for x, y in zip(frames_a, frames_b))
    assert np.array_equal(SampleSource(width=160, height=96).frame(5), frames_a[5]), "a frame depends on its index only"
    other_seed = SampleSource(width=160, height=96, seed=1).frame(5)
    assert not np.array_equal(other_seed, frames_a[5]), "the seed chooses the hand's tremor and the noise"


def test_sample_moves_a_little_each_frame_like_a_hand_held_camera():
    source = open_source("sample", SIZE)
    frames = read_n(source, 61)
    for before, after in zip(frames, frames[1:]):
        step = np.abs(after.astype(int) - before.astype(int)).mean()
        assert step > 0.5, "consecutive frames differ (shake, drift, sensor noise)"
        assert grey_ssim(before, after) > 0.6, "and still show the same scene"
    assert grey_ssim(frames[0], frames[60]) < grey_ssim(frames[0], frames[1]), "over two seconds the view drifts"
    unrelated = SampleSource("rocket", width=160, height=96).frame(0)
    assert grey_ssim(frames[0], unrelated) < grey_ssim(frames[0], frames[1]) - 0.3


def test_sample_static_is_the_still_photograph():
    source = open_source("sample:static", SIZE)
    frames = read_n(source, 5)
    assert all(np.array_equal(frames[0], f) for f in frames[1:]), "no motion, no shake, no noise"
    assert grey_ssim(frames[0], open_source("sample", SIZE).read()) > 0.6, "the same photo as the moving sample"
    named = open_source("sample:astronaut:static", SIZE)
    assert np.array_equal(named.read(), named.read())
    assert not np.array_equal(named.read(), frames[0])


def test_a_person_sized_cutout_slides_in_from_the_right_and_leaves():
    fps = 10.0
    with_person = SampleSource(width=160, height=96, fps=fps)
    without = SampleSource(width=160, height=96, fps=fps, with_object=False)
    changed = [changed_fraction(with_person.frame(i), without.frame(i)) for i in range(int(12 * fps))]
    assert changed[0] == 0.0, "the scene starts empty"
    first = next(i for i, share in enumerate(changed) if share > 0.01)
    entering = np.abs(with_person.frame(first).astype(int) - without.frame(first).astype(int)).max(axis=2) > 40
    columns = np.flatnonzero(entering.any(axis=0))
    assert columns.min() > 160 * 0.6, "it comes in at the right edge"
    assert max(changed) > 0.15, "person-sized: it covers a good part of the picture"
    assert changed[-1] == 0.0, "and it has left again before the cycle restarts"
    assert sum(1 for share in changed if share > 0.15) >= 2 * fps, "it stays in view for seconds, not a flash"


def test_sample_with_an_fps_is_live_and_paced():
    source = open_source("sample", SourceConfig(width=64, height=48, fps=50))
    assert source.live is True
    source.read()
    start = time.perf_counter()
    read_n(source, 5)
    assert time.perf_counter() - start >= 5 / 50 * 0.9
    source.close()
    assert source.read() is None, "closed: no more frames"


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_every_listed_photo_opens_at_the_configured_size(name):
    frame = open_source(f"sample:{name}", SourceConfig(width=64, height=48)).read()
    assert frame.shape == (48, 64, 3) and frame.std() > 10, "a real picture, not a blank"


def test_an_unknown_sample_name_is_one_line_listing_the_names():
    with pytest.raises(SourceError) as error:
        open_source("sample:mona-lisa")
    message = str(error.value)
    assert "'mona-lisa'" in message and "\n" not in message
    assert all(name in message for name in SAMPLE_NAMES)
