"""One conformance suite for every engine that runs here: same numbers as torch eager, same shapes, and for the
cached engines, a warm cache that is reused and a damaged one that is rebuilt.

All engines run the tiny model (TAESD as its VAE) at 64x64, F=1, UNet batch 2 (2 steps, RCFG self), so exports
and compiles stay small. torch-compile compiles the TAESD encoder / decoder only: compiling the UNet takes
minutes on 2 cores (the UNet's compiled path is the same `nn.Module.compile` call). torch-stages is the UNet cut
into stages over two CPU processes (`--devices cpu:2`, the exact pipeline schedule).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import pytest
import torch

from engines.base import Engine, EngineShapes
from engines.loading import ModelSpec

SHAPES = EngineShapes(width=64, height=64, frame_batch=1, unet_batch=2)
FP32_TOLERANCE = 1e-3
ACCELERATED = ("onnxruntime", "openvino", "torch-compile", "torch-stages")


@pytest.fixture(scope="module")
def spec(tiny_model_dir) -> ModelSpec:
    return ModelSpec(model=str(tiny_model_dir.model_dir), vae=str(tiny_model_dir.taesd_dir))


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("engine-cache")


@pytest.fixture(scope="module")
def reference(spec: ModelSpec) -> Engine:
    from engines.factory import create_engine

    return create_engine("torch", spec, SHAPES, device="cpu", threads=2)


def build(kind: str, spec: ModelSpec, cache_root: Path, export=None) -> Engine:
    if kind == "torch":
        from engines.factory import create_engine

        return create_engine("torch", spec, SHAPES, device="cpu", threads=2)
    if kind == "onnxruntime":
        from engines.onnx_engine import OnnxRuntimeOptions, create_onnxruntime_engine

        options = OnnxRuntimeOptions(cache_root=cache_root, export=export)  # export None: the default for the CPU
        return create_onnxruntime_engine(spec, SHAPES, "cpu", 2, options)
    if kind == "openvino":
        from engines.openvino_engine import OpenVinoOptions, create_openvino_engine

        return create_openvino_engine(spec, SHAPES, "cpu", 2, OpenVinoOptions(cache_root=cache_root))
    if kind == "torch-compile":
        from engines.compile_engine import CompiledTorchEngine
        from engines.loading import load_components

        return CompiledTorchEngine(load_components(spec, "cpu", torch.float32), SHAPES, parts=("vae",))
    if kind == "torch-stages":
        from engines.distributed_engine import build_distributed_engine
        from engines.parallel_settings import DeviceSettings

        return build_distributed_engine(spec, SHAPES, DeviceSettings(devices="cpu:2", parallel="pipeline"), 2)
    raise AssertionError(kind)


@pytest.fixture(scope="module")
def engine_of(spec: ModelSpec, cache_root: Path) -> Iterator[Callable[[str], Engine]]:
    """Engines by kind, each built once for the whole module (compiles and exports are the slow part)."""
    built: dict[str, Engine] = {}

    def get(kind: str) -> Engine:
        if kind not in built:
            built[kind] = build(kind, spec, cache_root)
        return built[kind]

    yield get
    for engine in built.values():
        if hasattr(engine, "close"):
            engine.close()  # torch-stages: its worker process


@pytest.fixture(params=("torch", *ACCELERATED))
def any_engine(request: pytest.FixtureRequest, engine_of: Callable[[str], Engine]) -> Engine:
    return engine_of(request.param)


@pytest.fixture(params=ACCELERATED)
def accelerated(request: pytest.FixtureRequest, engine_of: Callable[[str], Engine]) -> Engine:
    return engine_of(request.param)


def inputs(seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "images": torch.rand(1, 3, 64, 64, generator=generator) * 2 - 1,  # (F, 3, H, W)
        "latents": torch.randn(1, 4, 8, 8, generator=generator),  # (F, 4, h, w)
        "unet_latents": torch.randn(2, 4, 8, 8, generator=generator),  # (T*F, 4, h, w)
        "timesteps": torch.tensor([259, 39]),
        "embeddings": torch.randn(2, 77, 128, generator=generator),
    }


def max_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return float((a.float().cpu() - b.float().cpu()).abs().max())


# --- the contract -----------------------------------------------------------------------------------------------


@pytest.mark.timeout(600)
def test_engine_satisfies_the_engine_protocol_and_describes_the_model(any_engine: Engine, reference: Engine) -> None:
    assert isinstance(any_engine, Engine)
    assert any_engine.latent_channels == reference.latent_channels == 4
    assert any_engine.vae_scale_factor == reference.vae_scale_factor == 8
    assert any_engine.noise_schedule == reference.noise_schedule


@pytest.mark.timeout(600)
def test_outputs_have_the_contract_shapes(any_engine: Engine) -> None:
    x = inputs(0)
    assert any_engine.encode_prompt(["a watercolor painting"]).shape == (1, 77, 128)
    assert any_engine.encode_images(x["images"]).shape == (1, 4, 8, 8)
    assert any_engine.decode_latents(x["latents"]).shape == (1, 3, 64, 64)
    noise = any_engine.predict_noise(x["unet_latents"], x["timesteps"], x["embeddings"])
    assert noise.shape == (2, 4, 8, 8) and noise.dtype == torch.float32


# --- same numbers as torch eager --------------------------------------------------------------------------------


@pytest.mark.timeout(600)
def test_encode_prompt_matches_torch_eager(accelerated: Engine, reference: Engine) -> None:
    for prompt in ("a watercolor painting", "cyberpunk city at night, neon lights", ""):
        assert max_difference(accelerated.encode_prompt([prompt]), reference.encode_prompt([prompt])) < FP32_TOLERANCE


@pytest.mark.timeout(600)
def test_encode_images_matches_torch_eager(accelerated: Engine, reference: Engine) -> None:
    for seed in (1, 2):
        images = inputs(seed)["images"]
        assert max_difference(accelerated.encode_images(images), reference.encode_images(images)) < FP32_TOLERANCE


@pytest.mark.timeout(600)
def test_decode_latents_matches_torch_eager(accelerated: Engine, reference: Engine) -> None:
    for seed in (3, 4):
        latents = inputs(seed)["latents"]
        assert max_difference(accelerated.decode_latents(latents), reference.decode_latents(latents)) < FP32_TOLERANCE


@pytest.mark.timeout(600)
def test_predict_noise_matches_torch_eager(accelerated: Engine, reference: Engine) -> None:
    x = inputs(5)
    ours = accelerated.predict_noise(x["unet_latents"], x["timesteps"], x["embeddings"])
    theirs = reference.predict_noise(x["unet_latents"], x["timesteps"], x["embeddings"])
    assert max_difference(ours, theirs) < FP32_TOLERANCE
    assert float(theirs.abs().max()) > 1e-2  # a real output, not zeros matching zeros


# --- the engine cache -------------------------------------------------------------------------------------------


@pytest.mark.timeout(600)
def test_second_onnxruntime_build_reuses_the_cache_without_reexport(spec: ModelSpec, cache_root: Path) -> None:
    first = build("onnxruntime", spec, cache_root)
    graph_times = {p.name: p.stat().st_mtime_ns for p in first.graphs.directory.glob("*.onnx")}
    second = build("onnxruntime", spec, cache_root)
    assert second.graphs.cache_entry.built is False
    assert second.graphs.directory == first.graphs.directory
    assert {p.name: p.stat().st_mtime_ns for p in second.graphs.directory.glob("*.onnx")} == graph_times
    assert second.build_report["graphs"] == first.build_report["graphs"]  # the report of the original export


@pytest.mark.timeout(600)
def test_truncated_cached_graph_is_rebuilt_and_still_correct(
    spec: ModelSpec, reference: Engine, tmp_path: Path
) -> None:
    from engines.onnx_engine import PORTABLE_EXPORT  # the quicker exporter: the cache behaves the same for both

    build("onnxruntime", spec, tmp_path, PORTABLE_EXPORT)
    (unet_graph,) = tmp_path.glob("onnx-*/unet.onnx")
    unet_graph.write_bytes(unet_graph.read_bytes()[: unet_graph.stat().st_size // 2])
    rebuilt = build("onnxruntime", spec, tmp_path, PORTABLE_EXPORT)
    assert rebuilt.graphs.cache_entry.built is True
    assert "unet.onnx fails its checksum" in rebuilt.graphs.cache_entry.rebuilt_because
    x = inputs(6)
    ours = rebuilt.predict_noise(x["unet_latents"], x["timesteps"], x["embeddings"])
    theirs = reference.predict_noise(x["unet_latents"], x["timesteps"], x["embeddings"])
    assert max_difference(ours, theirs) < FP32_TOLERANCE
