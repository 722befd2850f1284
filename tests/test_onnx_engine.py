"""ONNX export checks, the engine cache and the ONNX Runtime engine: what is specified beyond conformance.

Speed is measured here too (ORT vs torch eager, same process, interleaved): printed with `-s`, and asserted only
loosely because the 2 cores are shared with other test runs.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import pytest
import torch

from engines.base import EngineShapes, EngineUnavailableError
from engines.engine_cache import MANIFEST_NAME, EngineCache, EngineCacheKey, LoraFingerprint, file_sha256
from engines.loading import ModelSpec
from engines.onnx_engine import (
    CPU_EXPORT, PORTABLE_EXPORT, OnnxRuntimeOptions, choose_providers, create_onnxruntime_engine, export_plan,
)
from engines.onnx_export import (
    CallAsModule, EngineBuildError, GraphSpec, OnnxExportOptions, TensorSpec, export_checked_graphs,
)

KEY = EngineCacheKey(
    model_hash="0123", width=256, height=256, frame_batch=1, unet_batch=2, text_batch=1, precision="fp32",
    backend="onnx", backend_version="ort1.31", opset=17, exporter_version="1",
)
SMALL = EngineShapes(width=64, height=64, frame_batch=1, unet_batch=2)


def write_files(files: dict[str, bytes]):
    """A cache builder that writes `files` and counts its calls."""
    calls = []

    def build(directory: Path) -> dict:
        calls.append(directory)
        for name, content in files.items():
            (directory / name).write_bytes(content)
        return {"graphs": sorted(files)}

    build.calls = calls
    return build


# --- cache keys -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("change", [
    {"model_hash": "4567"}, {"width": 512}, {"height": 320}, {"frame_batch": 2}, {"unet_batch": 4},
    {"text_batch": 2}, {"precision": "fp16"}, {"backend": "tensorrt"}, {"backend_version": "ort1.32"},
    {"opset": 18}, {"exporter_version": "2"}, {"gpu_model": "NVIDIA RTX 4090"},
    {"loras": (LoraFingerprint("beef", 1.0),)},
])
def test_any_change_that_alters_an_engine_gives_a_new_cache_entry(change: dict) -> None:
    assert dataclasses.replace(KEY, **change).digest() != KEY.digest()


def test_lora_scale_is_part_of_the_key() -> None:
    half = dataclasses.replace(KEY, loras=(LoraFingerprint("beef", 0.5),))
    full = dataclasses.replace(KEY, loras=(LoraFingerprint("beef", 1.0),))
    assert half.digest() != full.digest()


def test_equal_keys_name_the_same_entry() -> None:
    assert dataclasses.replace(KEY).digest() == KEY.digest()


# --- cache entries ----------------------------------------------------------------------------------------------


def test_cache_hit_returns_stored_report_without_building(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    build = write_files({"unet.onnx": b"graph"})
    first = cache.get_or_build(KEY, build)
    second = cache.get_or_build(KEY, build)
    assert (first.built, second.built) == (True, False)
    assert len(build.calls) == 1
    assert second.build_report["graphs"] == ["unet.onnx"]
    assert (second.path / "unet.onnx").read_bytes() == b"graph"


def test_entry_whose_manifest_names_another_key_is_rebuilt(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    entry = cache.get_or_build(KEY, write_files({"unet.onnx": b"graph"}))
    manifest = json.loads((entry.path / MANIFEST_NAME).read_text())
    manifest["key"]["unet_batch"] = 4
    (entry.path / MANIFEST_NAME).write_text(json.dumps(manifest))
    rebuilt = cache.get_or_build(KEY, write_files({"unet.onnx": b"graph"}))
    assert rebuilt.built and rebuilt.rebuilt_because == "manifest does not match the key"


def test_partial_entry_without_manifest_is_rebuilt(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    entry = cache.get_or_build(KEY, write_files({"unet.onnx": b"graph"}))
    (entry.path / MANIFEST_NAME).unlink()
    rebuilt = cache.get_or_build(KEY, write_files({"unet.onnx": b"graph"}))
    assert rebuilt.built and "manifest unreadable" in rebuilt.rebuilt_because


def test_missing_file_is_detected(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    entry = cache.get_or_build(KEY, write_files({"unet.onnx": b"graph", "vae.onnx": b"vae"}))
    (entry.path / "vae.onnx").unlink()
    assert cache.verify(KEY) == "vae.onnx is missing"


def test_rewritten_file_of_the_same_size_fails_its_checksum(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    entry = cache.get_or_build(KEY, write_files({"unet.onnx": b"graph"}))
    (entry.path / "unet.onnx").write_bytes(b"GRAPH")
    assert cache.verify(KEY) == "unet.onnx fails its checksum"


def test_untouched_files_are_trusted_by_their_stamp_and_rehash_checks_content(tmp_path: Path) -> None:
    """Warm starts skip hashing files whose size / mtime / inode are as built; a full rehash still sees content."""
    import os

    cache = EngineCache(tmp_path)
    entry = cache.get_or_build(KEY, write_files({"unet.onnx": b"graph"}))
    graph = entry.path / "unet.onnx"
    before = graph.stat()
    with open(graph, "r+b") as stream:  # same inode, same size, then the old mtime put back: invisible to stat
        stream.write(b"G")
    os.utime(graph, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert cache.verify(KEY) == ""
    assert cache.verify(KEY, rehash=True) == "unet.onnx fails its checksum"


def test_failed_build_leaves_no_entry_and_no_staging_directory(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)

    def failing_build(directory: Path) -> dict:
        (directory / "unet.onnx").write_bytes(b"half a gra")
        raise EngineBuildError("export failed")

    with pytest.raises(EngineBuildError):
        cache.get_or_build(KEY, failing_build)
    assert list(tmp_path.iterdir()) == []


# --- export checks ----------------------------------------------------------------------------------------------


class SampledPosterior(torch.nn.Module):
    """A graph that cannot match torch: it draws fresh noise (like sampling a VAE posterior instead of its mean)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.randn_like(x)


def test_exported_graph_that_differs_from_torch_is_a_one_line_build_error(tmp_path: Path) -> None:
    spec = GraphSpec("image_encoder", (TensorSpec("images", (1, 3, 8, 8), torch.float32),),
                     (TensorSpec("latents", (1, 3, 8, 8), torch.float32),))
    with pytest.raises(EngineBuildError) as raised:
        export_checked_graphs({"image_encoder": CallAsModule(SampledPosterior())}, [spec], tmp_path,
                              OnnxExportOptions(), threads=1, token_limit=10)
    message = str(raised.value)
    assert "image_encoder graph differs from torch" in message and "--engine torch" in message
    assert "\n" not in message


def test_export_report_records_each_graphs_difference(tmp_path: Path) -> None:
    spec = GraphSpec("image_decoder", (TensorSpec("latents", (1, 4, 8, 8), torch.float32),),
                     (TensorSpec("images", (1, 4, 8, 8), torch.float32),))
    report = export_checked_graphs({"image_decoder": CallAsModule(torch.nn.Tanh())}, [spec], tmp_path,
                                   OnnxExportOptions(), threads=1, token_limit=10)
    assert 0.0 <= report["graphs"]["image_decoder"]["max_abs_diff"] < 1e-6
    assert (tmp_path / "image_decoder.onnx").is_file()


# --- providers --------------------------------------------------------------------------------------------------


def test_best_available_provider_comes_first_and_cpu_is_always_the_fallback() -> None:
    available = ["CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"]
    assert choose_providers(None, available) == ["TensorrtExecutionProvider", "CUDAExecutionProvider",
                                                 "CPUExecutionProvider"]
    assert choose_providers(None, ["CoreMLExecutionProvider", "CPUExecutionProvider"]) == [
        "CoreMLExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers(None, available, device="cpu") == ["CPUExecutionProvider"]
    assert choose_providers(["CUDAExecutionProvider"], available) == ["CUDAExecutionProvider", "CPUExecutionProvider"]


def test_requested_provider_that_is_missing_names_the_package_to_install() -> None:
    with pytest.raises(EngineUnavailableError, match="onnxruntime-gpu"):
        choose_providers(["CUDAExecutionProvider"], ["CPUExecutionProvider"])
    with pytest.raises(EngineUnavailableError, match="no CUDA provider"):
        choose_providers(None, ["CPUExecutionProvider"], device="cuda")


def test_cpu_gets_the_attention_op_export_and_other_providers_the_portable_one() -> None:
    assert export_plan(None, ["CPUExecutionProvider"]) == [CPU_EXPORT, PORTABLE_EXPORT]
    assert (CPU_EXPORT.exporter, CPU_EXPORT.opset) == ("dynamo", 23)
    assert export_plan(None, ["CUDAExecutionProvider", "CPUExecutionProvider"]) == [PORTABLE_EXPORT]
    assert export_plan(PORTABLE_EXPORT, ["CPUExecutionProvider"]) == [PORTABLE_EXPORT]


@pytest.mark.timeout(600)
def test_an_intact_portable_entry_is_reused_instead_of_exporting_again(tiny_model_dir, tmp_path: Path) -> None:
    """A model whose preferred export failed once (leaving only the portable entry) starts without retrying it."""
    spec = ModelSpec(model=str(tiny_model_dir.model_dir), vae=str(tiny_model_dir.taesd_dir))
    create_onnxruntime_engine(spec, SMALL, "cpu", 2, OnnxRuntimeOptions(cache_root=tmp_path, export=PORTABLE_EXPORT))
    default = create_onnxruntime_engine(spec, SMALL, "cpu", 2, OnnxRuntimeOptions(cache_root=tmp_path))
    assert default.graphs.cache_entry.built is False
    assert default.graphs.export == PORTABLE_EXPORT


@pytest.mark.timeout(600)
def test_exporting_the_graphs_leaves_torchs_process_wide_thread_count_alone(tiny_model_dir, tmp_path: Path) -> None:
    """An embedding application, or a live stream beside a cache repair, keeps the torch thread pool it sized."""
    spec = ModelSpec(model=str(tiny_model_dir.model_dir), vae=str(tiny_model_dir.taesd_dir))
    before = torch.get_num_threads()
    engine = create_onnxruntime_engine(spec, SMALL, "cpu", 1, OnnxRuntimeOptions(cache_root=tmp_path,
                                                                                  export=PORTABLE_EXPORT))
    assert engine.graphs.cache_entry.built, "the graphs were exported here, not found in a cache"
    assert torch.get_num_threads() == before


# --- the engine on the tiny model -------------------------------------------------------------------------------


@pytest.mark.timeout(600)
def test_full_vae_exports_and_matches_torch(tiny_model_dir, tmp_path: Path) -> None:
    """The AutoencoderKL path (posterior mean x scaling factor, clamped decode), not just TAESD."""
    from engines.factory import create_engine

    spec = ModelSpec(model=str(tiny_model_dir.model_dir))
    engine = create_onnxruntime_engine(spec, SMALL, "cpu", 2, OnnxRuntimeOptions(cache_root=tmp_path))  # CPU_EXPORT
    reference = create_engine("torch", spec, SMALL, device="cpu", threads=2)
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    latents = reference.encode_images(images)
    assert float((engine.encode_images(images) - latents).abs().max()) < 1e-3
    assert float((engine.decode_latents(latents) - reference.decode_latents(latents)).abs().max()) < 1e-3
    assert set(engine.build_report["graphs"]) == {"text_encoder", "image_encoder", "image_decoder", "cross_kv", "unet"}


@pytest.mark.timeout(600)
def test_frame_buffer_of_two_builds_every_graph_at_its_static_batch(tiny_model_dir, tmp_path: Path) -> None:
    """F=2, T=2, RCFG self: encoder / decoder at batch 2, UNet at T*F = 4; numbers still match torch."""
    from engines.factory import create_engine

    spec = ModelSpec(model=str(tiny_model_dir.model_dir), vae=str(tiny_model_dir.taesd_dir))
    shapes = EngineShapes(width=64, height=64, frame_batch=2, unet_batch=4)
    options = OnnxRuntimeOptions(cache_root=tmp_path, export=PORTABLE_EXPORT)
    engine = create_onnxruntime_engine(spec, shapes, "cpu", 2, options)
    reference = create_engine("torch", spec, shapes, device="cpu", threads=2)
    generator = torch.Generator().manual_seed(7)
    images = torch.rand(2, 3, 64, 64, generator=generator) * 2 - 1
    latents, embeddings = torch.randn(4, 4, 8, 8, generator=generator), torch.randn(4, 77, 128, generator=generator)
    timesteps = torch.tensor([259, 259, 39, 39])
    assert float((engine.encode_images(images) - reference.encode_images(images)).abs().max()) < 1e-3
    noise = engine.predict_noise(latents, timesteps, embeddings)
    assert noise.shape == (4, 4, 8, 8)
    assert float((noise - reference.predict_noise(latents, timesteps, embeddings)).abs().max()) < 1e-3
    with pytest.raises(ValueError, match="built for"):
        engine.encode_images(images[:1])


@pytest.fixture(scope="module")
def engine_256(tiny_model_dir, tmp_path_factory: pytest.TempPathFactory):
    """256x256, 2 steps, RCFG self, F=1 (UNet batch 2), TAESD. (Its speed against torch is a benchmark: README.)"""
    spec = ModelSpec(model=str(tiny_model_dir.model_dir), vae=str(tiny_model_dir.taesd_dir))
    shapes = EngineShapes(width=256, height=256, frame_batch=1, unet_batch=2)
    options = OnnxRuntimeOptions(cache_root=tmp_path_factory.mktemp("cache-256"))
    return spec, shapes, options, create_onnxruntime_engine(spec, shapes, "cpu", 2, options)


def test_input_with_another_batch_than_built_is_a_clear_error(engine_256) -> None:
    engine = engine_256[3]
    with pytest.raises(ValueError, match=r"unet input latents has shape \(3, 4, 32, 32\).*built for \(2, 4, 32, 32\)"):
        engine.predict_noise(torch.zeros(3, 4, 32, 32), torch.zeros(3, dtype=torch.long), torch.zeros(3, 77, 128))


@pytest.mark.timeout(600)
def test_warm_cache_start_reuses_the_checked_graphs_without_exporting(engine_256) -> None:
    """The time to the first inference is printed (~1.3 s here when idle, the issue's target is 5 s) but not asserted:
    the 2 shared cores make any bound flaky. What makes it fast is asserted: no export, and the background check of the
    entry finds it intact and leaves the graphs in use."""
    spec, shapes, options, cold = engine_256
    started = time.perf_counter()
    warm = create_onnxruntime_engine(spec, shapes, "cpu", 2, options)
    warm.decode_latents(warm.predict_noise(torch.zeros(2, 4, 32, 32), torch.tensor([259, 39]),
                                           warm.encode_prompt(["a", "b"]))[:1])
    seconds = time.perf_counter() - started
    print(f"\nwarm start to first inference: {seconds:.2f} s; cold build: {cold.build_report['build_seconds']} s")
    assert warm.graphs.cache_entry.built is False
    assert warm.checked.wait(timeout=300) and warm.graphs.cache_entry.built is False


def test_checksum_valid_entry_that_onnxruntime_refuses_is_rebuilt_and_said(tiny_model_dir, tmp_path: Path,
                                                                           caplog: pytest.LogCaptureFixture) -> None:
    """An entry can be intact yet unusable (e.g. written by an incompatible runtime): it is rebuilt, not used."""
    spec = ModelSpec(model=str(tiny_model_dir.model_dir), vae=str(tiny_model_dir.taesd_dir))
    options = OnnxRuntimeOptions(cache_root=tmp_path, export=PORTABLE_EXPORT)
    first = create_onnxruntime_engine(spec, SMALL, "cpu", 2, options)
    entry = first.graphs.directory
    (entry / "image_decoder.onnx").write_bytes(b"not an onnx graph")
    manifest = json.loads((entry / MANIFEST_NAME).read_text())
    manifest["files"]["image_decoder.onnx"] = {"bytes": 17, "sha256": file_sha256(entry / "image_decoder.onnx")}
    (entry / MANIFEST_NAME).write_text(json.dumps(manifest))
    engines_log = logging.getLogger("vcam.engines")
    engines_log.addHandler(caplog.handler)  # directly: the CLI's logging set-up stops "vcam" propagating to root
    try:
        rebuilt = create_onnxruntime_engine(spec, SMALL, "cpu", 2, options)
    finally:
        engines_log.removeHandler(caplog.handler)
    assert rebuilt.graphs.cache_entry.built is True
    assert "failed to load" in rebuilt.graphs.cache_entry.rebuilt_because
    said = [r.getMessage() for r in unique_records(caplog) if "ONNX Runtime cannot load the cached" in r.getMessage()]
    assert len(said) == 1 and said[0].endswith("; rebuilding it"), "the rebuild is said, once"
    assert rebuilt.decode_latents(torch.zeros(1, 4, 8, 8)).shape == (1, 3, 64, 64)


def test_auto_does_not_pick_cpu_onnxruntime_over_a_gpu_torch_can_use() -> None:
    from engines.auto import onnxruntime_mismatch

    assert "onnxruntime-gpu" in onnxruntime_mismatch("cuda", ["CPUExecutionProvider"])
    assert onnxruntime_mismatch("cuda", ["CUDAExecutionProvider", "CPUExecutionProvider"]) == ""
    assert "CoreML" in onnxruntime_mismatch("mps", ["CPUExecutionProvider"])
    assert onnxruntime_mismatch("cpu", ["CPUExecutionProvider"]) == ""


@pytest.mark.timeout(600)
def unique_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """caplog's records, each once: the handler is attached to "vcam.engines" directly (the CLI's logging set-up,
    if an earlier test ran it, stops propagation), and without that set-up it also sees them through the root."""
    return list({id(record): record for record in caplog.records}.values())


def test_auto_chooses_the_faster_cpu_runtime_without_a_gpu_and_says_why_in_one_line(
    tiny_model_dir, isolated_home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from engines.factory import create_engine

    spec = ModelSpec(model=str(tiny_model_dir.model_dir), vae=str(tiny_model_dir.taesd_dir))
    engines_log = logging.getLogger("vcam.engines")
    engines_log.addHandler(caplog.handler)  # directly: the CLI's logging set-up stops "vcam" propagating to root
    level = engines_log.level
    engines_log.setLevel(logging.INFO)
    try:
        engine = create_engine("auto", spec, SMALL, device="cpu", threads=2)
    finally:
        engines_log.removeHandler(caplog.handler)
        engines_log.setLevel(level)
    reasons = [r.getMessage() for r in unique_records(caplog) if r.getMessage().startswith("engine auto chose")]
    assert len(reasons) == 1, "said once, as a log line (engines never print)"
    reason = reasons[0]
    assert engine.name in ("onnxruntime", "openvino")
    other = {"onnxruntime": "openvino", "openvino": "onnxruntime"}[engine.name]
    assert reason.startswith(f"engine auto chose {engine.name} on ")
    assert f"x the UNet speed of {other} (measured at build time)" in reason
    if not torch.cuda.is_available():
        assert "tensorrt: TensorRT needs an NVIDIA GPU" in reason
    cache = isolated_home / ".cache" / "vcam" / "engines"
    assert any(cache.glob("onnx-*/manifest.json")) and any(cache.glob("runtime-race-*/manifest.json"))


def test_auto_falls_back_to_torch_when_no_accelerated_engine_can_run(tiny_model_dir) -> None:
    from engines.auto import build_tensorrt, build_torch, choose_engine

    spec = ModelSpec(model=str(tiny_model_dir.model_dir), vae=str(tiny_model_dir.taesd_dir))
    choice = choose_engine(spec, SMALL, "cpu", 2, candidates=(("tensorrt", build_tensorrt), ("torch", build_torch)))
    assert choice.engine.name == "torch"
    assert choice.reason.startswith("engine auto chose torch on cpu") and "\n" not in choice.reason
    if not torch.cuda.is_available():
        assert "skipped tensorrt: TensorRT needs an NVIDIA GPU" in choice.reason
        assert "--engine" not in choice.reason  # no advice to pick an engine: auto has picked one
