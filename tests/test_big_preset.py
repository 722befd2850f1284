"""A preset with 10,000 prompts: a live `vcam run` reaches its first stylised frame in bounded memory (a real
subprocess, the real tiny model, peak RSS sampled with psutil) and says in one line how many prompts were encoded
ahead. (Encoded in one batch they took 4.4 GB and 90 s on 2 cores.)"""
from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

import psutil
import pytest

from bench.stops import VcamRun

BIG = 10_000
GROWTH_LIMIT_MB = 300  # one batch of 10,000 texts through the tiny text encoder took 4.4 GB


def write_preset(path: Path, prompts: int) -> Path:
    body = ["[model]", 'model = "tiny"', 'engine = "torch"', "[stream]", "width = 128", "height = 128",
            "t_index_list = [32, 45]", 'guidance = "none"']
    for i in range(prompts):
        body += ["[[prompts]]", f'name = "style{i}"', f'text = "a painting in style number {i}, detailed"']
    path.write_text("\n".join(body) + "\n", encoding="utf-8")
    return path


def run_and_measure_peak_rss(preset: Path) -> tuple[str, float]:
    """A live `vcam run` (MJPEG output) until its first stylised frame (the prompts are encoded before it), then
    SIGINT; its RSS is sampled every 20 ms throughout. Returns (its stderr, the peak RSS in MB)."""
    env = dict(os.environ, OMP_NUM_THREADS="2", DISPLAY="")  # the isolated home of `tiny_user_cache`
    process = VcamRun(
        [sys.executable, "-m", "vcam.cli", "run", "--preset", str(preset), "--source", "synthetic", "--sink",
         "mjpeg:0", "--no-tray", "--no-hotkeys"], env)
    peak = 0
    watched = psutil.Process(process.process.pid)
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
    try:
        lines = process.wait_for_line("first stylised frame", timeout=300)
        process.send_signal(signal.SIGINT)
        rest = process.finish(timeout=60)
    finally:
        done.set()
        if process.poll() is None:
            process.kill()
    sampler.join()
    return "".join(lines) + rest, peak / 2**20


@pytest.mark.timeout(900)
def test_ten_thousand_prompts_start_in_bounded_memory_and_say_how_many_are_encoded_ahead(
    tmp_path: Path, tiny_user_cache: Path
) -> None:
    _, small_peak = run_and_measure_peak_rss(write_preset(tmp_path / "small.toml", 4))
    output, big_peak = run_and_measure_peak_rss(write_preset(tmp_path / "big.toml", BIG))
    assert big_peak - small_peak < GROWTH_LIMIT_MB, f"peak RSS {small_peak:.0f} MB -> {big_peak:.0f} MB"
    lines = [line for line in output.splitlines() if "encoded ahead" in line]
    assert len(lines) == 1 and f"of {BIG + 1} prompt texts" in lines[0], output
    assert "Traceback" not in output
