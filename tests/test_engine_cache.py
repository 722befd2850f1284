"""Specs of the engine cache when its files go bad: never used broken, rebuilt with one line that says why.

Real files, a real killed build process, a real read-only folder and the real ONNX Runtime engine on the tiny model.
A read-only folder as root (the tests run as root here, where `chmod` stops nothing and `os.access` says yes):
the immutable attribute (`chattr +i`), which stops root's writes too; as another user, `chmod 555`.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from engines.engine_cache import MANIFEST_NAME, OWNER_NAME, STALE_STAGING_SECONDS, EngineCache, EngineCacheKey
from engines.loading import ModelSpec
from engines.onnx_engine import PORTABLE_EXPORT, OnnxRuntimeOptions, OnnxSessions, create_onnxruntime_engine

KEY = EngineCacheKey(
    model_hash="0123", width=256, height=256, frame_batch=1, unet_batch=2, text_batch=1, precision="fp32",
    backend="onnx", backend_version="ort1.31", opset=17, exporter_version="1",
)
SMALL_SHAPES = dict(width=64, height=64, frame_batch=1, unet_batch=2)


class EngineLines(logging.Handler):
    """The lines the engines say (logger `vcam.engines`), as a user would read them."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def saying(self, *words: str) -> list[str]:
        return [line for line in self.lines if all(word in line for word in words)]


@pytest.fixture
def said():
    logger = logging.getLogger("vcam.engines")
    handler, level = EngineLines(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


def write_files(files: dict[str, bytes]):
    def build(directory: Path) -> dict:
        for name, content in files.items():
            (directory / name).write_bytes(content)
        return {"graphs": sorted(files)}

    return build


@contextmanager
def read_only(directory: Path):
    """Make `directory` truly unwritable for this process (see the module docstring), and writable again after."""
    as_root = os.geteuid() == 0
    if as_root:
        made = subprocess.run(["chattr", "+i", str(directory)], capture_output=True).returncode == 0
    else:
        directory.chmod(0o555)
        made = True
    try:
        probe = directory / "probe"
        try:
            probe.mkdir()
        except OSError:
            pass
        else:
            probe.rmdir()
            made = False
        if not made:
            pytest.skip("this file system offers no folder that this user cannot write")
        yield directory
    finally:
        if as_root:
            subprocess.run(["chattr", "-i", str(directory)], capture_output=True)
        else:
            directory.chmod(0o755)


# --- a rebuild says why -----------------------------------------------------------------------------------------


def test_truncated_graph_is_rebuilt_and_the_reason_is_said_in_one_line(tmp_path: Path, said: EngineLines) -> None:
    cache = EngineCache(tmp_path)
    entry = cache.get_or_build(KEY, write_files({"unet.onnx": b"a whole graph"}))
    (entry.path / "unet.onnx").write_bytes(b"a whole")
    rebuilt = cache.get_or_build(KEY, write_files({"unet.onnx": b"a whole graph"}))
    assert rebuilt.built and (rebuilt.path / "unet.onnx").read_bytes() == b"a whole graph"
    [line] = said.saying("rebuilding")
    assert "unet.onnx fails its checksum (size changed)" in line and KEY.digest() in line and "\n" not in line


def test_deleted_manifest_is_rebuilt_and_the_reason_is_said_in_one_line(tmp_path: Path, said: EngineLines) -> None:
    cache = EngineCache(tmp_path)
    entry = cache.get_or_build(KEY, write_files({"unet.onnx": b"graph"}))
    (entry.path / MANIFEST_NAME).unlink()
    assert cache.get_or_build(KEY, write_files({"unet.onnx": b"graph"})).built
    [line] = said.saying("rebuilding")
    assert "manifest unreadable (FileNotFoundError)" in line


def test_a_first_build_is_not_called_a_rebuild(tmp_path: Path, said: EngineLines) -> None:
    EngineCache(tmp_path).get_or_build(KEY, write_files({"unet.onnx": b"graph"}))
    assert said.lines == []


# --- a cache that cannot be written -----------------------------------------------------------------------------


def test_read_only_cache_that_needs_a_rebuild_builds_in_a_temporary_root_and_says_so(
    tmp_path: Path, said: EngineLines
) -> None:
    root = tmp_path / "engines"
    cache = EngineCache(root)
    entry = cache.get_or_build(KEY, write_files({"unet.onnx": b"a whole graph"}))
    (entry.path / "unet.onnx").write_bytes(b"a whole")  # truncated: must be rebuilt, but the root is read-only
    with read_only(root):
        rebuilt = EngineCache(root).get_or_build(KEY, write_files({"unet.onnx": b"a whole graph"}))
        assert rebuilt.built and (rebuilt.path / "unet.onnx").read_bytes() == b"a whole graph"
        assert root not in rebuilt.path.parents
        [line] = said.saying("cannot be written")
        assert str(root) in line and "for this run only" in line and "\n" not in line


def test_a_file_where_the_cache_folder_should_be_does_not_stop_a_build(tmp_path: Path, said: EngineLines) -> None:
    (tmp_path / "vcam").write_text("not a folder")
    entry = EngineCache(tmp_path / "vcam" / "engines").get_or_build(KEY, write_files({"unet.onnx": b"graph"}))
    assert (entry.path / "unet.onnx").read_bytes() == b"graph"
    assert said.saying("cannot be written", "NotADirectoryError")


def test_intact_entry_in_a_read_only_cache_is_used_as_is(tmp_path: Path, said: EngineLines) -> None:
    root = tmp_path / "engines"
    built = EngineCache(root).get_or_build(KEY, write_files({"unet.onnx": b"graph"}))
    with read_only(root):
        entry = EngineCache(root).get_or_build(KEY, write_files({"unet.onnx": b"graph"}))
    assert entry.path == built.path and not entry.built and said.lines == []


# --- staging folders of killed builds ---------------------------------------------------------------------------

KILLED_BUILD = """
import sys, time
from pathlib import Path
from engines.engine_cache import EngineCache, EngineCacheKey

def build(directory):
    (directory / "unet.onnx").write_bytes(b"half a gra")
    print("building", flush=True)
    time.sleep(600)

key = EngineCacheKey(model_hash="0123", width=256, height=256, frame_batch=1, unet_batch=2, text_batch=1,
                     precision="fp32", backend="onnx", backend_version="ort1.31", opset=17, exporter_version="1")
EngineCache(Path(sys.argv[1])).get_or_build(key, build)
"""


@pytest.mark.timeout(120)
def test_staging_folder_of_a_killed_build_is_removed_and_a_live_ones_is_kept(tmp_path: Path, said: EngineLines) -> None:
    builder = subprocess.Popen([sys.executable, "-c", KILLED_BUILD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert builder.stdout.readline().strip() == "building"
        [staging] = tmp_path.glob(".building-*")
        assert (staging / OWNER_NAME).is_file()
        long_ago = time.time() - STALE_STAGING_SECONDS - 60
        os.utime(staging, (long_ago, long_ago))
        cache = EngineCache(tmp_path)
        assert cache.remove_stale_staging() == [] and staging.is_dir()  # its builder still runs
    finally:
        builder.send_signal(signal.SIGKILL)
        builder.wait(timeout=60)
    entry = cache.get_or_build(KEY, write_files({"unet.onnx": b"graph"}))
    assert not staging.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [entry.path.name]
    assert said.saying("removed", staging.name)


def test_young_staging_folder_without_an_owner_is_kept(tmp_path: Path) -> None:
    """A folder just made by `mkdtemp` has no owner file yet: only age tells it from debris."""
    (tmp_path / ".building-young").mkdir()
    assert EngineCache(tmp_path).remove_stale_staging() == []
    assert (tmp_path / ".building-young").is_dir()


# --- a corrupt graph found after a warm start -------------------------------------------------------------------


def flip_weights_in_place(graph: Path) -> None:
    """Overwrite part of the largest weight tensor, keeping the file's size, inode and mtime (invisible to stat)."""
    import onnx

    model = onnx.load(str(graph))
    largest = max(model.graph.initializer, key=lambda tensor: len(tensor.raw_data))
    content = graph.read_bytes()
    offset = content.find(largest.raw_data)
    assert offset > 0 and len(largest.raw_data) >= 4096
    before = graph.stat()
    with open(graph, "r+b") as stream:
        stream.seek(offset)
        stream.write(np.full(1024, 0.37, dtype=np.float32).tobytes())
    os.utime(graph, ns=(before.st_atime_ns, before.st_mtime_ns))


def make_stream(engine):
    from core.config import StreamConfig
    from core.prompts import PromptCache, PromptSwitcher
    from core.stream import DiffusionStream

    config = StreamConfig(width=64, height=64, t_index_list=(32, 45), frame_buffer_size=1, guidance="none",
                          prompt="a watercolor painting", negative_prompt="blurry")
    cache = PromptCache(engine.encode_prompt)
    cache.prefill([config.prompt, config.negative_prompt])
    return DiffusionStream(engine, config, PromptSwitcher(cache, config.negative_prompt, config.prompt))


@pytest.mark.timeout(900)
def test_flipped_bytes_in_a_cached_graph_are_found_after_start_and_the_stream_soon_matches_torch(
    tiny_model_dir, tmp_path: Path, said: EngineLines
) -> None:
    from engines.base import EngineShapes
    from engines.factory import create_engine

    spec = ModelSpec(model=str(tiny_model_dir.model_dir))  # the full VAE: TAESD's random weights saturate pictures
    shapes = EngineShapes(**SMALL_SHAPES)
    options = OnnxRuntimeOptions(cache_root=tmp_path, export=PORTABLE_EXPORT)
    cold = create_onnxruntime_engine(spec, shapes, "cpu", 2, options)
    flip_weights_in_place(cold.graphs.path("unet"))
    cache = EngineCache(tmp_path)
    assert cache.verify(cold.graphs.cache_key) == ""  # the stamp cannot see it: a warm start would trust it
    reference = create_engine("torch", spec, shapes, device="cpu", threads=2)
    latents, timesteps = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1)), torch.tensor([259, 39])
    embeddings = reference.encode_prompt(["a", "b"])
    corrupt = OnnxSessions(cold.graphs, ["CPUExecutionProvider"], 2).predict_noise(latents, timesteps, embeddings)
    assert float((corrupt - reference.predict_noise(latents, timesteps, embeddings)).abs().max()) > 0.01  # it matters

    warm = create_onnxruntime_engine(spec, shapes, "cpu", 2, options)
    assert warm.graphs.cache_entry.built is False  # the fast warm start is kept
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))  # (1, 3, H, W) in [0, 1]
    expected = make_stream(reference)
    for _ in range(3):
        wanted = expected.process(image)  # steady: constant input, fixed noise
    stream = make_stream(warm)
    deadline = time.monotonic() + 600
    while float((stream.process(image) - wanted).abs().max()) > 2e-3:
        assert time.monotonic() < deadline, "the stream kept running the corrupt graph"
    [line] = said.saying("rebuilding")
    assert "unet.onnx fails its checksum" in line and "after start" in line and "\n" not in line
    assert warm.checked.wait(timeout=600)
    assert cache.verify(cold.graphs.cache_key, rehash=True) == ""  # the entry on disk is whole again
    assert float((warm.predict_noise(latents, timesteps, embeddings)
                  - reference.predict_noise(latents, timesteps, embeddings)).abs().max()) < 1e-3
    assert isinstance(warm.runner, OnnxSessions)  # back on ONNX Runtime, not left on the torch fallback


@pytest.mark.timeout(600)
def test_flipped_bytes_in_the_cached_text_encoder_are_found_before_the_first_prompt_is_encoded(
    tiny_model_dir, tmp_path: Path, said: EngineLines
) -> None:
    """Prompt embeddings outlive the call (core caches them): the text encoder cannot wait for the background check."""
    from engines.base import EngineShapes
    from engines.factory import create_engine

    spec = ModelSpec(model=str(tiny_model_dir.model_dir), vae=str(tiny_model_dir.taesd_dir))
    shapes = EngineShapes(**SMALL_SHAPES)
    options = OnnxRuntimeOptions(cache_root=tmp_path, export=PORTABLE_EXPORT)
    cold = create_onnxruntime_engine(spec, shapes, "cpu", 2, options)
    flip_weights_in_place(cold.graphs.path("text_encoder"))
    warm = create_onnxruntime_engine(spec, shapes, "cpu", 2, options)
    assert warm.graphs.cache_entry.built is True
    assert warm.graphs.cache_entry.rebuilt_because == "text_encoder.onnx fails its checksum"
    assert said.saying("rebuilding", "text_encoder.onnx fails its checksum")
    reference = create_engine("torch", spec, shapes, device="cpu", threads=2)
    texts = ["a watercolor painting"]
    assert float((warm.encode_prompt(texts) - reference.encode_prompt(texts)).abs().max()) < 1e-3


@pytest.mark.timeout(600)
def test_vcam_run_with_a_read_only_engine_cache_builds_elsewhere_and_writes_the_video(
    tiny_user_cache: Path, tmp_path: Path
) -> None:
    from tests.media import read_video

    engines = tiny_user_cache / ".cache" / "vcam" / "engines"
    engines.mkdir(parents=True)
    out = tmp_path / "out.mp4"
    with read_only(engines):
        result = subprocess.run(
            [sys.executable, "-m", "vcam.cli", "run", "--model", "tiny", "--engine", "onnxruntime", "--source",
             "synthetic", "--sink", str(out), "--frames", "4", "--width", "64", "--height", "64", "--no-tray",
             "--no-hotkeys", "--quiet"],
            capture_output=True, text=True, timeout=540, env={**os.environ, "OMP_NUM_THREADS": "2"})
        assert list(engines.iterdir()) == []
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    [line] = [line for line in result.stderr.splitlines() if "cannot be written" in line]
    assert str(engines) in line and "for this run only" in line
    assert len(read_video(out)) == 4
