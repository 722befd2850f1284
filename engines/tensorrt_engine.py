"""TensorRT engine: fp16 static-shape plans built from the checked ONNX graphs, run with preallocated CUDA buffers.

Only NVIDIA GPUs run TensorRT, so everything that can be decided without one (exported graphs and their checks,
cache keys, the buffer plan) is plain Python tested on any machine; every TensorRT / CUDA call sits behind
`require_tensorrt()`, which turns a missing GPU or package into one `EngineUnavailableError` line.

API: TensorRT 10 (`build_serialized_network`, `create_execution_context`, `set_tensor_address`,
`execute_async_v3`); the removed bindings API (`execute_async_v2`) is not used.

The engine is a `GraphRunner` (engines.graph_engine) whose graphs run as plans: one plan per ONNX graph, so the
UNet plan takes the cross-attention keys / values that the `cross_kv` plan computes once per prompt, as the
ONNX Runtime and OpenVINO engines do.
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from engines.base import EngineShapes, EngineUnavailableError, NoiseScheduleConfig
from engines.engine_cache import EngineCache, EngineCacheKey, log
from engines.graph_engine import GraphRunner
from engines.onnx_export import EngineBuildError, GraphSpec, ModelDims, graph_specs

WORKSPACE_BYTES = 4 << 30
_TRT_TO_TORCH = {"FLOAT": torch.float32, "HALF": torch.float16, "INT64": torch.int64, "INT32": torch.int32,
                 "BF16": torch.bfloat16}


@dataclass(frozen=True)
class EngineIO:
    """One input or output tensor as a built TensorRT engine declares it."""

    name: str
    is_input: bool
    shape: tuple[int, ...]
    dtype: torch.dtype


@dataclass(frozen=True)
class PlannedBuffer:
    name: str
    is_input: bool
    shape: tuple[int, ...]
    dtype: torch.dtype
    nbytes: int


@dataclass(frozen=True)
class BufferPlan:
    """The buffers of one engine, allocated once and bound once: inputs in graph order, then outputs."""

    graph: str
    buffers: tuple[PlannedBuffer, ...]

    @property
    def total_bytes(self) -> int:
        return sum(buffer.nbytes for buffer in self.buffers)

    @property
    def inputs(self) -> tuple[PlannedBuffer, ...]:
        return tuple(buffer for buffer in self.buffers if buffer.is_input)

    @property
    def outputs(self) -> tuple[PlannedBuffer, ...]:
        return tuple(buffer for buffer in self.buffers if not buffer.is_input)


def _compatible(expected: torch.dtype, declared: torch.dtype) -> bool:
    """fp16 plans may declare fp16 or fp32 io for float tensors; TensorRT may narrow int64 indices to int32."""
    if expected.is_floating_point:
        return declared in (torch.float32, torch.float16)
    return declared in (torch.int64, torch.int32)


def plan_buffers(shapes: EngineShapes, dims: ModelDims, graph: str, engine_io: Sequence[EngineIO]) -> BufferPlan:
    """Check a built engine's io against the static shapes it must serve and plan one buffer per tensor.

    A plan from the cache that was built for other shapes (or a different graph) is refused here, before any
    memory is bound, with an error that says to rebuild.
    """
    specs = {spec.name: spec for spec in graph_specs(shapes, dims)}
    if graph not in specs:
        raise EngineBuildError(f"unknown graph {graph!r}; expected one of {', '.join(sorted(specs))}")
    spec: GraphSpec = specs[graph]
    declared = {io.name: io for io in engine_io}
    expected = [(tensor, True) for tensor in spec.inputs] + [(tensor, False) for tensor in spec.outputs]
    unexpected = sorted(set(declared) - {tensor.name for tensor, _ in expected})
    if unexpected:
        raise EngineBuildError(f"the {graph} engine has unexpected tensors {unexpected}; delete the engine cache")
    buffers = []
    for tensor, is_input in expected:
        io = declared.get(tensor.name)
        if io is None:
            raise EngineBuildError(f"the {graph} engine lacks tensor {tensor.name!r}; delete the engine cache")
        if io.is_input != is_input:
            raise EngineBuildError(
                f"the {graph} engine has {tensor.name!r} as the wrong direction; delete the engine cache")
        if tuple(io.shape) != tensor.shape:
            raise EngineBuildError(
                f"the {graph} engine was built for {tensor.name} {tuple(io.shape)}, these shapes need "
                f"{tensor.shape}; delete the engine cache"
            )
        if not _compatible(tensor.dtype, io.dtype):
            raise EngineBuildError(f"the {graph} engine declares {tensor.name} as {io.dtype}; delete the engine cache")
        nbytes = math.prod(tensor.shape) * torch.empty((), dtype=io.dtype).element_size()
        buffers.append(PlannedBuffer(tensor.name, is_input, tensor.shape, io.dtype, nbytes))
    return BufferPlan(graph, tuple(buffers))


def require_tensorrt() -> Any:
    """The `tensorrt` module, or `EngineUnavailableError` saying what is missing and what to use instead."""
    if not torch.cuda.is_available():
        raise EngineUnavailableError("TensorRT needs an NVIDIA GPU with CUDA; none found",
                                     fix="use --engine onnxruntime or --engine auto")
    try:
        import tensorrt
    except ImportError as error:
        raise EngineUnavailableError("TensorRT is not installed",
                                     fix="pip install 'vcam[tensorrt]' (tensorrt>=10), or use --engine onnxruntime"
                                     ) from error
    major = int(str(tensorrt.__version__).split(".")[0])
    if major < 10:
        raise EngineUnavailableError(f"TensorRT {tensorrt.__version__} is too old",
                                     fix="pip install 'tensorrt>=10', or use --engine onnxruntime")
    return tensorrt


def tensorrt_cache_key(onnx_key: EngineCacheKey, trt_version: str, gpu_model: str) -> EngineCacheKey:
    """The plan's key: the ONNX graphs' key plus fp16, the TensorRT version and the GPU model it was built on."""
    fields = onnx_key.as_json()
    fields.update(backend="tensorrt", backend_version=f"{onnx_key.backend_version}+trt{trt_version}",
                  precision="fp16", gpu_model=gpu_model)
    fields["loras"] = onnx_key.loras
    return EngineCacheKey(**fields)


def _progress_monitor_class(trt: Any) -> type | None:
    """A `trt.IProgressMonitor` that drives tqdm bars with an ETA; None where the TensorRT build lacks it."""
    if not hasattr(trt, "IProgressMonitor"):
        return None
    from tqdm import tqdm

    class TqdmProgressMonitor(trt.IProgressMonitor):
        """One tqdm bar per builder phase (tqdm shows the remaining-time estimate); called from builder threads."""

        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.bars: dict[str, tqdm] = {}
            self.lock = threading.Lock()

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            with self.lock:
                self.bars[phase_name] = tqdm(total=num_steps, desc=phase_name, leave=parent_phase is None)

        def step_complete(self, phase_name: str, step: int) -> bool:
            with self.lock:
                bar = self.bars.get(phase_name)
                if bar is not None:
                    bar.update(step + 1 - bar.n)
            return True  # False would cancel the build

        def phase_finish(self, phase_name: str) -> None:
            with self.lock:
                bar = self.bars.pop(phase_name, None)
                if bar is not None:
                    bar.close()

    return TqdmProgressMonitor


def build_plan(trt: Any, onnx_path: Path, plan_path: Path) -> float:
    """Parse a checked ONNX graph and build an fp16 static-shape plan into `plan_path`; the seconds it took."""
    started = time.perf_counter()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT cannot parse {onnx_path.name} ({errors[:200]}); use --engine onnxruntime")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    config.set_flag(trt.BuilderFlag.FP16)
    monitor_class = _progress_monitor_class(trt)
    monitor = monitor_class() if monitor_class is not None else None  # must outlive the build
    if monitor is not None:
        config.progress_monitor = monitor
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f"TensorRT failed to build {onnx_path.name}; use --engine onnxruntime")
    plan_path.write_bytes(bytes(serialized))
    return time.perf_counter() - started


class TensorRTGraph:
    """One deserialised plan with its buffers allocated and bound once; `run` copies in, executes, copies out
    every output."""

    def __init__(self, trt: Any, runtime: Any, plan_path: Path, shapes: EngineShapes, dims: ModelDims, graph: str):
        self.engine = runtime.deserialize_cuda_engine(plan_path.read_bytes())
        if self.engine is None:
            raise EngineBuildError(f"the cached TensorRT plan {plan_path.name} does not load; delete the engine cache")
        engine_io = []
        for index in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(index)
            engine_io.append(EngineIO(
                name=name,
                is_input=self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT,
                shape=tuple(self.engine.get_tensor_shape(name)),
                dtype=_TRT_TO_TORCH[self.engine.get_tensor_dtype(name).name],
            ))
        self.plan = plan_buffers(shapes, dims, graph, engine_io)
        self.context = self.engine.create_execution_context()
        self.tensors = {b.name: torch.empty(b.shape, dtype=b.dtype, device="cuda") for b in self.plan.buffers}
        for name, tensor in self.tensors.items():
            self.context.set_tensor_address(name, tensor.data_ptr())
        self.stream = torch.cuda.Stream()

    def run(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        for buffer, value in zip(self.plan.inputs, inputs):
            if tuple(value.shape) != buffer.shape:
                raise ValueError(
                    f"{self.plan.graph} input {buffer.name} has shape {tuple(value.shape)}, the engine was built "
                    f"for {buffer.shape}; rebuild with matching --width/--height/--frame-buffer-size"
                )
            self.tensors[buffer.name].copy_(value)
        current = torch.cuda.current_stream()
        self.stream.wait_stream(current)
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError(f"TensorRT execution of the {self.plan.graph} failed")
        current.wait_stream(self.stream)
        return tuple(self.tensors[buffer.name].clone() for buffer in self.plan.outputs)


class TensorRTEngine(GraphRunner):
    """`Engine` on TensorRT. Built from the ONNX graphs of an `OnnxGraphSet` (see `engines.onnx_engine`)."""

    name = "tensorrt"
    engine_name = "tensorrt"

    def __init__(self, graphs: "Any", cache: EngineCache, checked_graphs: Callable[[], Any] | None = None) -> None:
        """`checked_graphs()` gives the ONNX graphs hashed in full, called only when plans must be built from them."""
        trt = require_tensorrt()
        super().__init__(graphs)  # engines.onnx_engine.OnnxGraphSet: checked ONNX graphs, tokenizer, dims
        self.device = torch.device("cuda")
        self.dtype = torch.float16
        self.noise_schedule: NoiseScheduleConfig = graphs.noise_schedule
        self.latent_channels = graphs.dims.latent_channels
        self.vae_scale_factor = graphs.dims.vae_scale_factor
        gpu_model = torch.cuda.get_device_name(torch.cuda.current_device())
        self.cache_key = tensorrt_cache_key(graphs.cache_key, trt.__version__, gpu_model)

        def build(directory: Path) -> dict:
            source = checked_graphs() if checked_graphs is not None else graphs
            seconds = {}
            for spec in source.specs:
                log.warning(f"building TensorRT {spec.name} for {gpu_model} (typically 1-10 minutes per graph) ...")
                seconds[spec.name] = round(build_plan(trt, source.path(spec.name), directory / f"{spec.name}.plan"), 1)
            return {"plan_build_seconds": seconds}

        # Plans are hashed in full before use: TensorRT reads the whole plan into memory at start anyway, and a plan
        # with flipped bytes may deserialise and run (there is no background check and swap for TensorRT).
        self.cache_entry = cache.get_or_build(self.cache_key, build, rehash=True)
        self.build_report = self.cache_entry.build_report
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.runners = {
            spec.name: TensorRTGraph(trt, runtime, self.cache_entry.path / f"{spec.name}.plan",
                                     graphs.shapes, graphs.dims, spec.name)
            for spec in graphs.specs
        }

    def _run_graph(self, spec: GraphSpec, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        return self.runners[spec.name].run(*inputs)


def build_tensorrt_engine(spec: Any, shapes: EngineShapes, device: str, threads: int | None) -> TensorRTEngine:
    """Factory entry (`--engine tensorrt`): checks for a GPU and TensorRT before any export work is done."""
    from engines.onnx_engine import PORTABLE_EXPORT, build_graph_set, default_threads

    require_tensorrt()
    if device.startswith(("cpu", "mps")):
        raise EngineUnavailableError(f"TensorRT runs on CUDA GPUs only, not on {device}; use --device cuda or auto")
    cache, threads = EngineCache(), default_threads(threads)
    graphs = build_graph_set(spec, shapes, cache, PORTABLE_EXPORT, threads)  # opset TensorRT parses

    def checked_graphs():
        """The graphs hashed in full (a warm start trusted their stamps), re-exported if one fails: plans built from a
        corrupt graph would be cached as valid."""
        problem = "" if graphs.cache_entry.built else cache.verify(graphs.cache_key, rehash=True)
        if not problem:
            return graphs
        reason = f"{problem}, found by the full check before building TensorRT plans"
        return build_graph_set(spec, shapes, cache, PORTABLE_EXPORT, threads, force_rebuild=reason)

    return TensorRTEngine(graphs, cache, checked_graphs)
