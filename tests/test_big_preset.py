"""A preset with 10,000 prompts: `vcam run` starts in bounded memory (a real subprocess, the real tiny model,
peak RSS sampled with psutil) and says in one line how many prompts were encoded ahead."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import psutil
import pytest

BIG = 10_000
GROWTH_LIMIT_MB = 300  # one batch of 10,000 texts through the tiny text encoder took 4.4 GB


def write_preset(path: Path, prompts: int) -> Path:
    body = ["[model]", 'model = "tiny"', 'engine = "torch"', "[stream]", "width = 128", "height = 128",
            "t_index_list = [32, 45]", 'guidance = "none"']
    for i in range(prompts):
        body += ["[[prompts]]", f'name = "style{i}"', f'text = "a painting in style number {i}, detailed"']
    path.write_text("\n".join(body) + "\n", encoding="utf-8")
    return path


def run_and_measure_peak_rss(preset: Path, out: Path, home: Path) -> tuple[subprocess.CompletedProcess, float]:
    """Run `vcam run` to completion, sampling the process's RSS every 20 ms; (result, peak in MB)."""
    env = dict(os.environ, XDG_CACHE_HOME=str(home / "cache"), XDG_CONFIG_HOME=str(home / "config"),
               XDG_STATE_HOME=str(home / "state"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="2")
    env.pop("DISPLAY", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "vcam.cli", "run", "--preset", str(preset), "--source", "synthetic", "--sink",
         str(out), "--frames", "3", "--no-tray", "--no-hotkeys"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    peak = 0
    watched = psutil.Process(process.pid)
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.02):
            try:
                peak = max(peak, watched.memory_info().rss)
            except psutil.Error:
                return

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = process.communicate(timeout=400)
    done.set()
    sampler.join()
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr), peak / 2**20


@pytest.mark.timeout(900)
def test_ten_thousand_prompts_start_in_bounded_memory_and_say_how_many_are_encoded_ahead(tmp_path: Path) -> None:
    home = tmp_path / "home"
    small, small_peak = run_and_measure_peak_rss(write_preset(tmp_path / "small.toml", 4), tmp_path / "a.mp4", home)
    assert small.returncode == 0, small.stderr
    big, big_peak = run_and_measure_peak_rss(write_preset(tmp_path / "big.toml", BIG), tmp_path / "b.mp4", home)
    assert big.returncode == 0, big.stderr
    assert (tmp_path / "b.mp4").stat().st_size > 0, "start-up still works: frames were written"
    assert big_peak - small_peak < GROWTH_LIMIT_MB, f"peak RSS {small_peak:.0f} MB -> {big_peak:.0f} MB"
    lines = [line for line in big.stderr.splitlines() if "encoded ahead" in line]
    assert len(lines) == 1 and f"of {BIG + 1} prompt texts" in lines[0], big.stderr
    assert "Traceback" not in big.stderr
