"""`create_engine`: one entry point from an engine name to a ready `Engine`.

Backends are a registry of builders keyed by name, so adding one (onnxruntime, tensorrt, torch-compile, auto)
is one line in `ENGINE_BUILDERS`, e.g. `"onnxruntime": lazy_builder("engines.ort_engine", "build_ort_engine")`,
and the CLI can list the choices from the keys. Builders are imported lazily so that importing the factory never
pulls in onnxruntime or tensorrt.
"""
from __future__ import annotations

import importlib
import logging
from typing import Callable

from engines.base import Engine, EngineShapes, EngineUnavailableError
from engines.devices import place
from engines.loading import ModelSpec, load_components
from engines.parallel_settings import DeviceSettings

log = logging.getLogger("vcam.engines")

EngineBuilder = Callable[[ModelSpec, EngineShapes, str, "int | None"], Engine]


def lazy_builder(module: str, function: str) -> EngineBuilder:
    """A builder that imports `module.function` only when that engine is asked for."""

    def build(spec: ModelSpec, shapes: EngineShapes, device: str, threads: int | None, **options: str) -> Engine:
        return getattr(importlib.import_module(module), function)(spec, shapes, device, threads, **options)

    build.__name__ = f"{module}.{function}"
    return build


def build_torch_engine(spec: ModelSpec, shapes: EngineShapes, device: str, threads: int | None) -> Engine:
    """Torch eager: load the components onto the chosen device (fp16 on GPUs, fp32 on CPU) and wrap them."""
    from engines.torch_engine import TorchEngine

    placement = place(device, threads)
    # cross_attention_kv (engines.kv_cache) stays off until bench/kv_gain.py on a quiet machine shows it is not
    # slower: the runs so far shared the cores with other benchmarks and resolve no difference either way (README).
    return TorchEngine(load_components(spec, placement.device, placement.dtype), shapes)


INT8_ENGINES = ("onnxruntime", "openvino", "auto")  # the engines over the ONNX graphs, which engines.quantize serves
BF16_ENGINES = ("openvino", "auto")  # OpenVINO's CPU plugin runs the UNet in bf16 (engines.openvino_engine)
PRECISIONS = ("auto", "fp32", "bf16", "int8")

ENGINE_BUILDERS: dict[str, EngineBuilder] = {
    "torch": build_torch_engine,
    "torch-compile": lazy_builder("engines.compile_engine", "build_compile_engine"),
    "onnxruntime": lazy_builder("engines.onnx_engine", "build_onnxruntime_engine"),
    "openvino": lazy_builder("engines.openvino_engine", "build_openvino_engine"),
    "tensorrt": lazy_builder("engines.tensorrt_engine", "build_tensorrt_engine"),
    "auto": lazy_builder("engines.auto", "build_auto_engine"),
}


def create_engine(
    kind: str, spec: ModelSpec, shapes: EngineShapes, device: str = "auto", threads: int | None = None,
    devices: DeviceSettings | None = None, precision: str = "fp32",
) -> Engine:
    """Build the engine named `kind` for `spec` at `shapes`; an unknown name lists the known ones.

    `devices` naming several devices builds the multi-device engine instead (torch stages; see
    engines.distributed_engine), which replaces `device`. `precision="int8"` runs the UNet in INT8 on the engines
    over the ONNX graphs (engines.quantize); "bf16" runs it in bf16 on OpenVINO where the CPU computes bf16
    natively; "auto" is bf16 where that holds and fp32 elsewhere, silently. An explicit int8 / bf16 asked of an
    engine that cannot is an error naming the ones that can; one that has no effect where it ran is said once.
    """
    if precision not in PRECISIONS:
        raise EngineUnavailableError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
    able = {"int8": INT8_ENGINES, "bf16": BF16_ENGINES}.get(precision)
    if able is not None and kind not in able:
        raise EngineUnavailableError(
            f"--precision {precision} runs on --engine {', '.join(able)}, not {kind}; use one of them or "
            "--precision fp32")
    if devices is not None and devices.several:
        if kind not in ("auto", "torch"):
            raise EngineUnavailableError(f"--devices runs the UNet as torch stages; use --engine torch, not {kind!r}")
        if precision == "bf16":
            log.warning("precision bf16 has no effect on torch stages; they run fp32")
        from engines.distributed_engine import build_distributed_engine

        return build_distributed_engine(spec, shapes, devices, threads)
    builder = ENGINE_BUILDERS.get(kind)
    if builder is None:
        raise EngineUnavailableError(f"unknown engine {kind!r}; choose one of: {', '.join(sorted(ENGINE_BUILDERS))}")
    if precision in ("bf16", "auto") and kind in BF16_ENGINES:
        engine = builder(spec, shapes, device, threads, unet_precision=precision)
        if precision == "bf16" and getattr(engine, "unet_precision", None) is None:  # auto ended on ORT or torch
            _say_no_effect(precision, engine)
    else:
        engine = builder(spec, shapes, device, threads)
    if precision == "int8":
        _use_int8(engine)
    return engine


def _say_no_effect(precision: str, engine: Engine) -> None:
    """The one line for a precision `auto` cannot give on the engine it chose."""
    log.warning(f"precision {precision} has no effect on the {engine.name} engine auto chose; it runs fp32")


def _use_int8(engine: Engine) -> None:
    """INT8 UNet on a graph engine; `auto` that fell back to torch says once that int8 has no effect there."""
    from engines.graph_engine import GraphEngine

    if not isinstance(engine, GraphEngine):
        _say_no_effect("int8", engine)
        return
    from engines.quantize import use_int8_unet

    log.warning(use_int8_unet(engine))
