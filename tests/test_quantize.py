"""`--precision int8`: the UNet runs fp32 while the stream's first calls calibrate it, then the INT8 UNet is
swapped in and cached; later starts use the cached INT8 UNet from the first call.

The tiny model at 64x64 keeps the quantization quick; the speed and picture quality of INT8 at real sizes are
benchmark figures (bench/int8.py), not tests.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engines.base import EngineShapes, EngineUnavailableError
from engines.loading import ModelSpec

SMALL = EngineShapes(width=64, height=64, frame_batch=1, unet_batch=2)
CALLS = 4


@pytest.fixture(scope="module")
def spec(tiny_model_dir) -> ModelSpec:
    return ModelSpec(model=str(tiny_model_dir.model_dir), vae=str(tiny_model_dir.taesd_dir))


def stream_like_calls(engine, count: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """UNet inputs as a stream makes them: encoded images noised at the stream's timesteps, one prompt's embedding."""
    generator = torch.Generator().manual_seed(seed)
    embedding = engine.encode_prompt(["a watercolor painting"]).expand(2, -1, -1)  # (T, 77, D)
    calls = []
    for _ in range(count):
        image = torch.rand(1, 3, 64, 64, generator=generator) * 2 - 1
        latent = engine.encode_images(image)  # (1, 4, 8, 8)
        noisy = torch.cat([latent, latent]) + torch.randn(2, 4, 8, 8, generator=generator) * torch.tensor(
            [[[[0.9]]], [[[0.3]]]])
        calls.append((noisy, torch.tensor([899, 299]), embedding))
    return calls


def build(kind: str, spec: ModelSpec, cache_root: Path):
    if kind == "onnxruntime":
        from engines.onnx_engine import OnnxRuntimeOptions, create_onnxruntime_engine

        return create_onnxruntime_engine(spec, SMALL, "cpu", 2, OnnxRuntimeOptions(cache_root=cache_root))
    from engines.openvino_engine import OpenVinoOptions, create_openvino_engine

    return create_openvino_engine(spec, SMALL, "cpu", 2, OpenVinoOptions(cache_root=cache_root))


@pytest.mark.timeout(900)
@pytest.mark.parametrize("kind", ["onnxruntime", "openvino"])
def test_int8_unet_is_calibrated_on_the_first_calls_then_used_and_cached(
    kind: str, spec: ModelSpec, tmp_path: Path
) -> None:
    from engines.quantize import INT8_UNET, use_int8_unet

    engine = build(kind, spec, tmp_path)
    calls = stream_like_calls(engine, CALLS + 2, seed=0)
    fp32 = [engine.predict_noise(*call) for call in calls]
    assert "first 4 calls" in use_int8_unet(engine, calibration_calls=CALLS, in_background=False)
    for index, call in enumerate(calls[:CALLS]):
        assert torch.equal(engine.predict_noise(*call), fp32[index])  # calibration calls still run fp32
    assert engine.int8_ready.is_set() and engine.runner.unet_path.endswith(INT8_UNET)
    for index in (CALLS, CALLS + 1):  # calls it was not calibrated on
        int8 = engine.predict_noise(*calls[index])
        error = float((int8 - fp32[index]).pow(2).mean().sqrt())
        assert 0 < error < 0.1 * float(fp32[index].pow(2).mean().sqrt())  # INT8: close to fp32, not identical

    again = build(kind, spec, tmp_path)
    assert "cached INT8 UNet" in use_int8_unet(again, calibration_calls=CALLS)
    assert again.int8_ready.is_set() and again.runner.unet_path == engine.runner.unet_path
    assert torch.equal(again.predict_noise(*calls[CALLS]), engine.predict_noise(*calls[CALLS]))


def test_int8_asked_of_an_engine_that_cannot_is_one_line_naming_those_that_can(spec: ModelSpec) -> None:
    from engines.factory import create_engine

    with pytest.raises(EngineUnavailableError) as raised:
        create_engine("torch", spec, SMALL, device="cpu", threads=2, precision="int8")
    message = str(raised.value)
    assert "\n" not in message and "onnxruntime, openvino, auto" in message and "--precision fp32" in message
