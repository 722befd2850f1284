"""Specification of `vcam demo` (what `installer/install.sh --demo` runs): a real subprocess, the real tiny model,
the real sample source, the written files read back with OpenCV as a player would."""
from __future__ import annotations

import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.media import read_video
from tests.test_cli import run_vcam
from vcam.demo import DEMO_FRAMES, DEMO_SOURCE, DEMO_STYLES, SHEET_FRAME, SheetLayout
from vcam.sources import SourceConfig, open_source

SIZE = 128  # the model's resolution for these runs: small, so the suite stays fast on 2 busy cores
FRAMES = 8  # two frames a style


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    """One run of `vcam demo` (the trained tiny model shipped with vcam), shared by the specifications below: its
    output folder and the finished process."""
    home, out = tmp_path_factory.mktemp("home"), tmp_path_factory.mktemp("demo")
    result = run_vcam("demo", "--out", str(out), "--frames", str(FRAMES), "--width", str(SIZE), "--height", str(SIZE),
                      env_home=home, timeout=1700)
    assert result.returncode == 0, result.stderr
    return out, result


@pytest.fixture(scope="module")
def demo_dir(demo_run: tuple[Path, subprocess.CompletedProcess]) -> Path:
    return demo_run[0]


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
def test_the_demo_says_what_it_makes_before_it_starts_and_where_it_wrote_at_the_end(demo_run) -> None:
    # Its output is not a terminal here, so there is no bar: the first line is all a log or a pipe sees until the end.
    out, result = demo_run
    assert result.stderr.splitlines()[0] == (f"vcam: the demo restyles {FRAMES} frames of {DEMO_SOURCE} with tiny at "
                                             f"{SIZE}x{SIZE}, 1 step a frame")
    assert f"{out / 'vcam-demo.mp4'} ({FRAMES} frames" in result.stdout and str(out / "vcam-demo.png") in result.stdout


@pytest.mark.timeout(1800)
def test_no_label_on_a_small_contact_sheet_runs_into_the_next_panel_or_off_the_sheet(demo_dir: Path) -> None:
    sheet = cv2.cvtColor(cv2.imread(str(demo_dir / "vcam-demo.png")), cv2.COLOR_BGR2RGB)
    layout = SheetLayout(width=SIZE, height=SIZE)  # 128 pixels: the labels at their full size would be too wide
    strip = sheet[: layout.panel_origin(0)[1]]  # the labels' rows, above the pictures
    ink = (strip < 128).any(axis=(0, 2))  # the columns a label drew in
    for index in range(layout.panels):
        x = layout.panel_origin(index)[0]
        assert ink[x : x + SIZE].any(), f"panel {index} has its label"
        assert not ink[x + SIZE : x + SIZE + layout.gutter].any(), f"the label of panel {index} stays above it"
    assert not ink[: layout.gutter].any()


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


def test_demo_help_says_what_it_runs_and_that_the_defaults_shown_are_runs(tmp_path: Path) -> None:
    result = run_vcam("demo", "--help", env_home=tmp_path, timeout=60)
    text = " ".join(result.stdout.split())
    assert result.returncode == 0 and DEMO_SOURCE in text and f"for {DEMO_FRAMES} frames" in text, text
    assert "the defaults the options below show are `vcam run`'s" in text
    assert "which are replaced if there" in text  # --out: an earlier demo's files
