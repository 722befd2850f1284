"""TensorRT without a GPU: the buffer plan, the plan's cache key and the guard that names the fix.

The TensorRT calls themselves need an NVIDIA GPU; everything decided before them is specified here.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

from engines.base import EngineShapes, EngineUnavailableError
from engines.engine_cache import EngineCacheKey
from engines.graph_engine import GraphRunner
from engines.onnx_export import EngineBuildError, ModelDims, graph_specs
from engines.tensorrt_engine import EngineIO, TensorRTEngine, plan_buffers, require_tensorrt, tensorrt_cache_key

SHAPES = EngineShapes(width=256, height=192, frame_batch=1, unet_batch=2)
DIMS = ModelDims(latent_channels=4, vae_scale_factor=8, embed_dim=128)
KV_DIMS = dataclasses.replace(DIMS, cross_attention=((8, 8), (8, 16)))  # two cross-attention layers: keys / values


def declared_io(graph: str, shapes: EngineShapes = SHAPES, float_dtype: torch.dtype = torch.float16,
                dims: ModelDims = DIMS) -> list[EngineIO]:
    """The io a correctly built plan for `graph` declares (floats in fp16, as an fp16 plan would)."""
    spec = {s.name: s for s in graph_specs(shapes, dims)}[graph]
    io = [EngineIO(t.name, True, t.shape, float_dtype if t.dtype.is_floating_point else t.dtype) for t in spec.inputs]
    return io + [EngineIO(t.name, False, t.shape, float_dtype) for t in spec.outputs]


def test_unet_plan_has_static_batch_and_latent_shapes() -> None:
    plan = plan_buffers(SHAPES, DIMS, "unet", declared_io("unet"))
    shapes = {b.name: b.shape for b in plan.buffers}
    assert shapes == {"latents": (2, 4, 24, 32), "timesteps": (2,), "embeddings": (2, 77, 128), "noise": (2, 4, 24, 32)}
    assert [b.name for b in plan.inputs] == ["latents", "timesteps", "embeddings"]
    assert [b.name for b in plan.outputs] == ["noise"]


def test_with_cross_attention_layers_cross_kv_plans_their_keys_and_values_and_the_unet_binds_them() -> None:
    cross_kv = plan_buffers(SHAPES, KV_DIMS, "cross_kv", declared_io("cross_kv", dims=KV_DIMS))
    unet = plan_buffers(SHAPES, KV_DIMS, "unet", declared_io("unet", dims=KV_DIMS))
    keys_values = {"cross_key_0": (2, 8, 77, 8), "cross_value_0": (2, 8, 77, 8),
                   "cross_key_1": (2, 8, 77, 16), "cross_value_1": (2, 8, 77, 16)}
    assert {b.name: b.shape for b in cross_kv.inputs} == {"embeddings": (2, 77, 128)}
    assert {b.name: b.shape for b in cross_kv.outputs} == keys_values
    assert [b.name for b in unet.inputs] == ["latents", "timesteps", *keys_values]
    assert {b.name: b.shape for b in unet.inputs[2:]} == keys_values
    with pytest.raises(EngineBuildError, match="unexpected tensors \\['embeddings'\\]"):  # a plan of the old layout
        plan_buffers(SHAPES, KV_DIMS, "unet", declared_io("unet"))


class RecordedPlan:
    """Stands in for a `TensorRTGraph`: records its calls, returns zeros of its outputs' shapes."""

    def __init__(self, outputs: list[tuple[int, ...]]) -> None:
        self.outputs, self.calls = outputs, []

    def run(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        self.calls.append(inputs)
        return tuple(torch.full(shape, float(len(self.calls))) for shape in self.outputs)


def test_tensorrt_unet_calls_take_the_keys_and_values_cross_kv_computed_once_per_prompt() -> None:
    specs = graph_specs(SHAPES, KV_DIMS)
    engine = TensorRTEngine.__new__(TensorRTEngine)  # no GPU here: the plans are stand-ins
    GraphRunner.__init__(engine, type("Graphs", (), {"specs": specs})())
    by_name = {spec.name: spec for spec in specs}
    engine.runners = {name: RecordedPlan([t.shape for t in by_name[name].outputs]) for name in ("cross_kv", "unet")}
    latents, timesteps = torch.zeros(2, 4, 24, 32), torch.tensor([259, 39])
    first, second = torch.zeros(2, 77, 128), torch.ones(2, 77, 128)
    for embeddings in (first, first.clone(), second, second):
        engine.predict_noise(latents, timesteps, embeddings)
    projections, unet_calls = engine.runners["cross_kv"].calls, engine.runners["unet"].calls
    assert len(projections) == 2 and len(unet_calls) == 4  # one projection per prompt
    assert all(len(call) == 2 + 4 and call[0] is latents for call in unet_calls)
    assert [float(call[2].max()) for call in unet_calls] == [1.0, 1.0, 2.0, 2.0]  # each prompt's own keys


def test_plan_sizes_follow_declared_dtypes() -> None:
    plan = plan_buffers(SHAPES, DIMS, "image_decoder", declared_io("image_decoder"))
    assert plan.inputs[0].nbytes == 1 * 4 * 24 * 32 * 2  # fp16 latents
    assert plan.outputs[0].nbytes == 1 * 3 * 192 * 256 * 2
    assert plan.total_bytes == plan.inputs[0].nbytes + plan.outputs[0].nbytes


def test_rcfg_full_batch_is_planned_at_twice_the_stream_batch() -> None:
    full = dataclasses.replace(SHAPES, unet_batch=2 * 2 * 1)
    plan = plan_buffers(full, DIMS, "unet", declared_io("unet", full))
    assert plan.inputs[0].shape[0] == 4 and plan.outputs[0].shape[0] == 4


def test_plan_built_for_other_shapes_is_refused_with_rebuild_hint() -> None:
    other = dataclasses.replace(SHAPES, width=512)
    with pytest.raises(EngineBuildError, match="delete the engine cache"):
        plan_buffers(SHAPES, DIMS, "unet", declared_io("unet", other))


def test_plan_missing_or_extra_tensor_is_refused() -> None:
    io = declared_io("unet")
    with pytest.raises(EngineBuildError, match="lacks tensor 'timesteps'"):
        plan_buffers(SHAPES, DIMS, "unet", [t for t in io if t.name != "timesteps"])
    with pytest.raises(EngineBuildError, match="unexpected tensors"):
        plan_buffers(SHAPES, DIMS, "unet", io + [EngineIO("extra", True, (1,), torch.float32)])


def test_plan_with_wrong_direction_or_dtype_is_refused() -> None:
    io = declared_io("text_encoder")
    flipped = [dataclasses.replace(t, is_input=not t.is_input) for t in io]
    with pytest.raises(EngineBuildError, match="wrong direction"):
        plan_buffers(SHAPES, DIMS, "text_encoder", flipped)
    wrong_type = [dataclasses.replace(io[0], dtype=torch.float32), io[1]]  # token ids must be integers
    with pytest.raises(EngineBuildError, match="declares input_ids"):
        plan_buffers(SHAPES, DIMS, "text_encoder", wrong_type)


def test_int32_indices_and_fp32_io_are_accepted() -> None:
    io = [dataclasses.replace(t, dtype=torch.int32) if t.name == "timesteps" else t
          for t in declared_io("unet", float_dtype=torch.float32)]
    plan = plan_buffers(SHAPES, DIMS, "unet", io)
    assert {b.name: b.dtype for b in plan.buffers}["timesteps"] == torch.int32


def test_tensorrt_key_adds_gpu_model_and_version_to_the_onnx_key() -> None:
    onnx_key = EngineCacheKey(
        model_hash="abc", width=256, height=256, frame_batch=1, unet_batch=2, text_batch=1, precision="fp32",
        backend="onnx", backend_version="onnx1.23", opset=17, exporter_version="1",
    )
    key = tensorrt_cache_key(onnx_key, "10.3.0", "NVIDIA GeForce RTX 4090")
    assert (key.backend, key.precision, key.gpu_model) == ("tensorrt", "fp16", "NVIDIA GeForce RTX 4090")
    assert "10.3.0" in key.backend_version
    assert key.digest() != tensorrt_cache_key(onnx_key, "10.3.0", "NVIDIA GeForce RTX 3060").digest()
    assert key.digest() != tensorrt_cache_key(onnx_key, "10.4.0", "NVIDIA GeForce RTX 4090").digest()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the guard is for machines without CUDA")
def test_tensorrt_without_gpu_is_unavailable_with_one_line_naming_alternatives() -> None:
    with pytest.raises(EngineUnavailableError) as raised:
        require_tensorrt()
    message = str(raised.value)
    assert "\n" not in message
    assert "NVIDIA GPU" in message and "--engine onnxruntime" in message


@pytest.mark.skipif(torch.cuda.is_available(), reason="the guard is for machines without CUDA")
def test_engine_tensorrt_from_the_factory_fails_fast_before_any_export(tiny_model_dir, tmp_path) -> None:
    from engines.factory import create_engine
    from engines.loading import ModelSpec

    with pytest.raises(EngineUnavailableError, match="^TensorRT needs an NVIDIA GPU with CUDA; none found"):
        create_engine("tensorrt", ModelSpec(model=str(tiny_model_dir.model_dir)), SHAPES, device="auto", threads=2)
