"""Specification of `--source sample`: a real photograph moved like a hand-held webcam, the same on every run."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from skimage.metrics import structural_similarity

from core.config import StreamConfig
from core.prompts import PromptCache, PromptSwitcher
from core.similarity import SimilarityFilter, SimilarityFilterConfig
from core.stream import DiffusionStream
from tests.media import read_video
from tests.test_cli import run_vcam
from vcam.processor import frames_to_tensor, tensor_to_frames
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


# --- the sample source in a real `vcam run` ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("home")


@pytest.mark.timeout(600)
def test_run_restyles_the_sample_source_into_a_video(home, tmp_path):
    out = tmp_path / "out.mp4"
    result = run_vcam("run", "--model", "tiny", "--source", "sample", "--sink", str(out), "--frames", "10",
                      "--width", "128", "--height", "128", "--no-tray", "--no-hotkeys", "--quiet", env_home=home)
    assert result.returncode == 0, result.stderr
    frames = read_video(out)
    assert len(frames) == 10 and frames[0].shape == (720, 1280, 3)


@pytest.mark.timeout(600)
def test_without_a_camera_run_says_so_in_one_line_and_uses_the_moving_sample(home, tmp_path):
    preset = tmp_path / "no-camera.toml"
    preset.write_text('[model]\nmodel = "tiny"\nengine = "torch"\n'
                      '[stream]\nwidth = 64\nheight = 64\nt_index_list = [32, 45]\nguidance = "none"\n'
                      '[camera]\nsource = "camera:/dev/vcam-no-such-camera"\n'
                      '[[prompts]]\nname = "sketch"\ntext = "pencil sketch"\n')
    out = tmp_path / "out.mp4"
    result = run_vcam("run", "--preset", str(preset), "--sink", str(out), "--frames", "4", "--no-tray",
                      "--no-hotkeys", "--quiet", env_home=home)
    assert result.returncode == 0, result.stderr
    fallback = [line for line in result.stderr.splitlines() if "instead" in line and "vcam-no-such-camera" in line]
    assert len(fallback) == 1 and "sample photo" in fallback[0], result.stderr
    assert "source: sample" in result.stderr
    assert len(read_video(out)) == 4


# --- the similarity filter on real pictures ----------------------------------------------------------------------
# the filter's defaults (StreamDiffusion's threshold), switched on
FILTER = SimilarityFilterConfig(enabled=True, threshold=0.98, max_skip=10)
MODEL_SIZE = 256  # the trained tiny engine's size (`trained_tiny_engine`)


def restyle_with_filter(engine, spec: str, count: int) -> tuple[DiffusionStream, list[np.ndarray]]:
    """`count` frames of the sample source through the stream with the similarity filter on."""
    config = StreamConfig(width=MODEL_SIZE, height=MODEL_SIZE, guidance="none", prompt="pencil sketch")
    prompts = PromptSwitcher(PromptCache(engine.encode_prompt), prompt=config.prompt)
    stream = DiffusionStream(engine, config, prompts, SimilarityFilter(FILTER))
    source = open_source(spec, SourceConfig(width=MODEL_SIZE, height=MODEL_SIZE, fps=30.0, live=False))
    outputs = []
    for _ in range(count):
        images = frames_to_tensor([source.read()], MODEL_SIZE, MODEL_SIZE, "crop")
        outputs.append(tensor_to_frames(stream.process(images))[0])
    return stream, outputs


def longest_frozen_run(outputs: list[np.ndarray]) -> int:
    """The most consecutive output frames equal to the one before them."""
    longest = run = 0
    for before, after in zip(outputs, outputs[1:]):
        run = run + 1 if np.array_equal(before, after) else 0
        longest = max(longest, run)
    return longest


@pytest.mark.timeout(900)
def test_the_similarity_filter_skips_a_still_photograph_at_the_expected_rate(trained_tiny_engine):
    count = 1 + 2 * (FILTER.max_skip + 1)  # the first frame, then two rounds of max_skip skips and one refresh
    stream, _ = restyle_with_filter(trained_tiny_engine, "sample:static", count)
    # Identical frames have cosine 1: skip probability 1, so every run of skips is max_skip long.
    assert stream.similarity.skipped == 2 * FILTER.max_skip
    assert stream.unet_calls == 3


@pytest.mark.timeout(900)
def test_the_similarity_filter_never_freezes_the_moving_sample(trained_tiny_engine):
    stream, outputs = restyle_with_filter(trained_tiny_engine, "sample", 1 + 2 * (FILTER.max_skip + 1))
    assert longest_frozen_run(outputs) <= FILTER.max_skip, "a new picture at least every max_skip + 1 frames"
    distinct = sum(not np.array_equal(a, b) for a, b in zip(outputs, outputs[1:]))
    assert distinct >= 2 and stream.similarity.processed > 2
