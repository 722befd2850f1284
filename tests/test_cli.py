"""The `vcam` command as a user runs it: a real subprocess, the real tiny model, real files."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.media import read_video


def run_vcam(*args: str, env_home: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.update(
        XDG_CACHE_HOME=str(env_home / "cache"),
        XDG_CONFIG_HOME=str(env_home / "config"),
        XDG_STATE_HOME=str(env_home / "state"),
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS="2",
    )
    env.pop("DISPLAY", None)
    return subprocess.run(
        [sys.executable, "-m", "vcam.cli", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("home")


@pytest.mark.timeout(400)
def test_run_writes_a_playable_60_frame_video(home: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    result = run_vcam("run", "--model", "tiny", "--source", "synthetic", "--sink", str(out), "--frames", "60",
                      "--no-tray", "--no-hotkeys", "--quiet", env_home=home)
    assert result.returncode == 0, result.stderr
    frames = read_video(out)
    assert len(frames) == 60
    assert frames[0].shape == (720, 1280, 3)  # the sink's configured size, whatever the model's
    assert max(float(f.std()) for f in frames) > 1.0  # pictures, not a blank stream


@pytest.mark.timeout(400)
def test_bench_json_reports_every_field(home: Path) -> None:
    result = run_vcam("bench", "--model", "tiny", "--frames", "12", "--width", "128", "--height", "128", "--json",
                      env_home=home)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    for key in ("model", "engine", "width", "height", "steps", "cfg", "frames", "seconds", "fps", "model_only_fps",
                "efficiency", "unet_calls", "skipped", "latency_ms_p50", "latency_ms_p95", "peak_rss_mb",
                "build_seconds"):
        assert key in report, key
    assert report["frames"] == 12
    assert report["width"] == 128 and report["steps"] == 2
    assert report["efficiency"] == pytest.approx(report["fps"] / report["model_only_fps"], rel=1e-2)
    assert report["unet_calls"] + report["skipped"] >= 12
    assert 0 < report["peak_rss_mb"] < 4000
    assert report["scheduler"] == "lcm" and report["t_index_list"] and report["num_inference_steps"] is None


def test_bench_says_which_solver_ran_and_its_schedule(home: Path) -> None:
    result = run_vcam("bench", "--model", "tiny", "--scheduler", "dpmsolver++", "--steps", "4", "--frames", "4",
                      "--width", "128", "--height", "128", "--json", "--no-progress", env_home=home)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["scheduler"] == "dpmsolver++" and report["num_inference_steps"] == 4
    assert report["steps"] == 2 and report["t_index_list"] is None  # strength 0.5 of 4 steps: 2 slots


@pytest.mark.parametrize(
    "args, words",
    [
        (("--model", "/nonexistent/model"), ["/nonexistent/model"]),
        (("--model", "tiny", "--cfg", "full", "--t-index-list", "45,32"), ["t_index_list", "increasing"]),
        (("--model", "tiny", "--width", "100"), ["multiples of 8"]),
        (("--model", "tiny", "--source", "/nonexistent/clip.mp4"), ["/nonexistent/clip.mp4"]),
        (("--model", "tiny", "--strength", "1.5", "--steps", "2"), ["strength"]),
        (("--preset", "no-such-preset"), ["no-such-preset"]),
    ],
)
@pytest.mark.timeout(120)
def test_bad_input_is_one_clear_line_not_a_traceback(home: Path, tmp_path: Path, args, words) -> None:
    result = run_vcam("run", *args, "--sink", str(tmp_path / "x.mp4"), "--frames", "2", "--no-tray", "--no-hotkeys",
                      "--quiet", env_home=home)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("vcam: error:")]
    assert len(errors) == 1, result.stderr
    for word in words:
        assert word in errors[0]


def test_presets_lists_the_shipped_presets(home: Path) -> None:
    result = run_vcam("presets", env_home=home)
    assert result.returncode == 0, result.stderr
    for name in ("tiny", "sd-turbo-1step", "sd-turbo-2step", "lcm-lora-sd15"):
        assert name in result.stdout


@pytest.mark.parametrize("args", [("run", "--guidance", "bogus"), ("run", "--t-index-list", ""),
                                  ("bench", "--width", "abc"), ("nonsense",)])
def test_an_option_mistake_is_one_line_naming_the_option_and_exit_2(args: tuple[str, ...], home: Path) -> None:
    result = run_vcam(*args, env_home=home, timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vcam: error: "), result.stderr
    assert "--help" in lines[0] and "usage:" not in result.stderr


def test_version_prints_the_installed_version(home: Path) -> None:
    from importlib.metadata import version

    result = run_vcam("--version", env_home=home, timeout=60)
    assert result.returncode == 0
    assert result.stdout.strip() == f"vcam {version('vcam')}"
