"""Specification of `vcam demo` (what `installer/install.sh --demo` runs): a real subprocess, the real tiny model,
the real sample source, the written files read back with OpenCV as a player would."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.media import read_video
from tests.test_cli import run_vcam
from vcam.demo import DEMO_SOURCE, DEMO_STYLES, SHEET_FRAME, SheetLayout
from vcam.sources import SourceConfig, open_source

SIZE = 128  # the model's resolution for these runs: small, so the suite stays fast on 2 busy cores
FRAMES = 8  # two frames a style


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One run of `vcam demo` (the trained tiny model shipped with vcam), shared by the specifications below."""
    home, out = tmp_path_factory.mktemp("home"), tmp_path_factory.mktemp("demo")
    result = run_vcam("demo", "--out", str(out), "--frames", str(FRAMES), "--width", str(SIZE), "--height", str(SIZE),
                      env_home=home, timeout=1700)
    assert result.returncode == 0, result.stderr
    assert "vcam-demo.mp4" in result.stdout and "vcam-demo.png" in result.stdout
    return out


def sample_frames(count: int) -> list[np.ndarray]:
    """The frames the demo feeds the model: the sample source at the model's size."""
    source = open_source(DEMO_SOURCE, SourceConfig(width=SIZE, height=SIZE, fps=30.0, live=False))
    return [source.read() for _ in range(count)]


def mean_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean())


def sheet_panels(path: Path, size: int) -> list[np.ndarray]:
    sheet = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    layout = SheetLayout(width=size, height=size)
    origins = [layout.panel_origin(index) for index in range(layout.panels)]
    return [sheet[y : y + size, x : x + size] for x, y in origins]


@pytest.mark.timeout(1800)
def test_demo_video_is_playable_and_shows_the_input_on_the_left(demo_dir: Path) -> None:
    frames = read_video(demo_dir / "vcam-demo.mp4")
    assert len(frames) == FRAMES
    assert frames[0].shape == (SIZE, 2 * SIZE, 3), "input | output, each at the model's size"
    inputs = sample_frames(FRAMES)
    for index, frame in enumerate(frames):
        left, right = frame[:, :SIZE], frame[:, SIZE:]
        distances = [mean_abs(left, expected) for expected in inputs]
        assert distances[index] < 8.0, "the left half is the sample frame (up to MPEG-4 compression)"
        assert distances[index] == min(distances), "and it is that very frame, in order"
        assert mean_abs(right, inputs[index]) > distances[index] + 5.0, "the right half is restyled, not a copy"


@pytest.mark.timeout(1800)
def test_demo_contact_sheet_shows_the_input_and_each_style_labelled(demo_dir: Path) -> None:
    sheet = cv2.cvtColor(cv2.imread(str(demo_dir / "vcam-demo.png")), cv2.COLOR_BGR2RGB)
    layout = SheetLayout(width=SIZE, height=SIZE)
    assert (sheet.shape[1], sheet.shape[0]) == layout.size
    assert layout.panels == 1 + len(DEMO_STYLES) == 5
    panels = sheet_panels(demo_dir / "vcam-demo.png", SIZE)
    labels = []
    for index in range(layout.panels):
        x, y = layout.panel_origin(index)
        labels.append(sheet[y - layout.label_height : y, x : x + SIZE])
    still = sample_frames(FRAMES)[min(SHEET_FRAME, FRAMES - 1)]
    assert np.array_equal(panels[0], still), "panel 0 is the input frame itself (PNG is lossless)"
    for index, label in enumerate(labels):
        assert (label < 128).any(), f"panel {index} has a label written above it"
        assert not np.array_equal(label, labels[index - 1]), "each label says its own name"
    for index in range(1, layout.panels):
        assert mean_abs(panels[index], still) > 5.0, "every style panel is restyled"


@pytest.mark.timeout(1800)
def test_the_four_styles_on_the_contact_sheet_differ_clearly(demo_dir: Path) -> None:
    styles = sheet_panels(demo_dir / "vcam-demo.png", SIZE)[1:]
    pairwise = [mean_abs(a, b) for i, a in enumerate(styles) for b in styles[i + 1 :]]
    assert min(pairwise) > 12.0, f"every two styles differ clearly (mean abs differences {pairwise})"


@pytest.mark.timeout(300)
def test_demo_into_a_missing_folder_is_one_line_naming_the_fix(tmp_path: Path) -> None:
    result = run_vcam("demo", "--out", str(tmp_path / "no" / "such"), "--frames", "4", env_home=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("vcam: error: output folder")


@pytest.mark.timeout(300)
def test_an_option_the_demo_ignores_is_said_once_and_cannot_stop_it(tmp_path: Path) -> None:
    # `--sink clip.xyz` would stop `vcam run`; the demo ignores --sink, so the run goes on to its own checks.
    result = run_vcam("demo", "--sink", "clip.xyz", "--out", str(tmp_path / "no" / "such"), "--frames", "4",
                      env_home=tmp_path)
    lines = result.stderr.strip().splitlines()
    assert lines[0] == "vcam: --sink has no effect on the demo (it writes vcam-demo.mp4 and vcam-demo.png)"
    assert ".xyz" not in result.stderr
    assert result.returncode == 2 and lines[-1].startswith("vcam: error: output folder"), result.stderr
