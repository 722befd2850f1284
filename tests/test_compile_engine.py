"""torch-compile engine: compiled before the first frame, modules keep their identity, clear error without a compiler.

Only the TAESD encoder / decoder are compiled here (64x64): compiling the tiny UNet takes minutes on 2 shared
cores. Its numbers against torch eager are in test_engine_conformance.py.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engines.base import EngineShapes, EngineUnavailableError
from engines.compile_engine import CompiledTorchEngine, require_compiler
from engines.loading import ModelSpec, load_components

SHAPES = EngineShapes(width=64, height=64, frame_batch=1, unet_batch=2)


@pytest.fixture(scope="module")
def compiled(tiny_model_dir):
    components = load_components(
        ModelSpec(model=str(tiny_model_dir.model_dir), vae=str(tiny_model_dir.taesd_dir)), "cpu", torch.float32)
    return components, CompiledTorchEngine(components, SHAPES, parts=("vae",))


def test_without_a_cpp_compiler_the_engine_is_unavailable_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # a PATH on which no compiler exists
    with pytest.raises(EngineUnavailableError) as raised:
        require_compiler()
    assert "C++ compiler" in str(raised.value) and "--engine torch" in str(raised.value)
    assert "\n" not in str(raised.value)


@pytest.mark.timeout(600)
def test_compiled_vae_keeps_its_type_so_the_taesd_path_is_used(compiled) -> None:
    components, engine = compiled
    assert type(components.vae).__name__ == "AutoencoderTiny"
    assert engine.compiled_parts == ["vae.encoder", "vae.decoder"]
    latents = engine.encode_images(torch.zeros(1, 3, 64, 64))
    assert latents.shape == (1, 4, 8, 8)  # TAESD latents, not an AutoencoderKL posterior


@pytest.mark.timeout(600)
def test_compilation_happens_in_the_constructor_not_at_the_first_frame(compiled) -> None:
    _, engine = compiled
    assert engine.build_report["warmup_seconds"] > 0
    image = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.compiler.set_stance("fail_on_recompile"):  # any compile from here on raises
        engine.decode_latents(engine.encode_images(image))
        with pytest.raises(RuntimeError):  # ...as a shape the engine was not warmed up for shows
            engine.encode_images(torch.zeros(1, 3, 32, 32))


def test_factory_knows_the_accelerated_engines() -> None:
    from engines.factory import ENGINE_BUILDERS

    assert {"torch-compile", "onnxruntime", "tensorrt", "auto"} <= set(ENGINE_BUILDERS)
