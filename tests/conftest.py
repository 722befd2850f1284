"""Shared fixtures: the tiny random-weight model (built once per session), engines running it and the trained tiny
model on the CPU.

Random weights produce denormal floats, which make CPU math ~20x slower, hence flush-to-zero at import; the
machines running the suite have 2 cores, shared, hence the thread cap.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from engines.testmodel import TinyModelPaths, write_test_model, write_test_taesd

torch.set_flush_denormal(True)
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> TinyModelPaths:
    """The seed-0 tiny SD model and its TAESD, written once per test session (same as `--model tiny`)."""
    root = tmp_path_factory.mktemp("tiny-model")
    return TinyModelPaths(model_dir=write_test_model(root / "model"), taesd_dir=write_test_taesd(root / "taesd"))


@pytest.fixture(scope="session")
def tiny_engine(tiny_model_dir: TinyModelPaths):
    """A torch engine on the CPU (fp32) running the tiny model at 256x256, built once per session.

    Shared by many tests: treat it as read-only (it has no mutable state beyond the model weights).
    """
    from engines.base import EngineShapes
    from engines.factory import create_engine
    from engines.loading import ModelSpec

    shapes = EngineShapes(width=256, height=256, frame_batch=1, unet_batch=2)
    return create_engine("torch", ModelSpec(model=str(tiny_model_dir.model_dir)), shapes, device="cpu", threads=2)


@pytest.fixture(scope="session")
def tiny_taesd_engine(tiny_model_dir: TinyModelPaths):
    """The tiny model with its TAESD as the VAE (what `--model tiny` runs): ~4x cheaper encode / decode."""
    from engines.base import EngineShapes
    from engines.factory import create_engine
    from engines.loading import ModelSpec

    spec = ModelSpec(model=str(tiny_model_dir.model_dir), vae=str(tiny_model_dir.taesd_dir))
    shapes = EngineShapes(width=256, height=256, frame_batch=1, unet_batch=2)
    return create_engine("torch", spec, shapes, device="cpu", threads=2)


@pytest.fixture(scope="session")
def trained_tiny_engine():
    """The trained tiny model (the shipped weights, `--model tiny`) on the CPU in fp32 at 256x256, built once per
    session: for tests that look at the picture (structure kept, prompt followed). Treat it as read-only."""
    from bench.tiny_figures import tiny_engine

    return tiny_engine("tiny", size=256, threads=2)


@pytest.fixture
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A throw-away HOME with its own config / cache / Hugging Face dirs, so tests never touch the user's."""
    home = tmp_path / "home"
    for sub in (".config", ".cache", ".local/share"):
        (home / sub).mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    monkeypatch.setenv("XDG_DATA_HOME", str(home / ".local/share"))
    monkeypatch.setenv("HF_HOME", str(home / ".cache/huggingface"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


@pytest.fixture
def tiny_user_cache(isolated_home: Path, tiny_model_dir: TinyModelPaths) -> Path:
    """An isolated home whose user cache already holds the session's tiny model, so `--model tiny` (in this
    process or a child) finds it instead of building it again."""
    from engines.testmodel import TINY_MODEL_VERSION

    models = isolated_home / ".cache" / "vcam" / "models"
    models.mkdir(parents=True)
    (models / TINY_MODEL_VERSION).symlink_to(tiny_model_dir.model_dir.parent)
    return isolated_home


# One real OBS Studio per test session (started on first use), shared by every module that asks for it.
from tests.obs_harness import obs_instance  # noqa: E402,F401


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On CI a real component that is missing is a failure, not a skip: a skipped test proves nothing, and .ci/run
    installs every tool the suite drives (Xvfb, xdotool, OBS Studio, trayer)."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("CI") and "is not installed" in str(report.longrepr):
        report.outcome = "failed"
