"""`--engine auto`: the fastest engine that can run here, and one line saying which and why.

Tried in order: TensorRT (NVIDIA GPU + the tensorrt package), ONNX Runtime with its best provider (on a CPU: it
or OpenVINO, whichever measured faster here, see engines.runtime_race), torch eager.
A candidate that cannot run or fails to build is skipped and its one-line reason kept, so the user sees why the
faster ones were not used (e.g. "tensorrt: TensorRT needs an NVIDIA GPU ...") without a traceback.
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Callable

from engines.base import Engine, EngineShapes, EngineUnavailableError
from engines.loading import ModelSpec
from engines.onnx_export import EngineBuildError

log = logging.getLogger("vcam.engines")

Builder = Callable[[ModelSpec, EngineShapes, str, "int | None"], Engine]


@dataclass(frozen=True)
class AutoChoice:
    engine: Engine
    reason: str  # one line: what was chosen and why the ones before it were not


def build_tensorrt(spec: ModelSpec, shapes: EngineShapes, device: str, threads: int | None) -> Engine:
    from engines.tensorrt_engine import build_tensorrt_engine

    return build_tensorrt_engine(spec, shapes, device, threads)


def onnxruntime_mismatch(torch_device_type: str, available_providers: list[str]) -> str:
    """Why ONNX Runtime would be the wrong pick on this device ("" when it fits).

    With a GPU that torch can use but an onnxruntime without a provider for it, ORT would run on the CPU:
    torch on the GPU is then far faster, so auto must not stop at ORT.
    """
    accelerators = {"cuda": ("TensorrtExecutionProvider", "CUDAExecutionProvider"),
                    "mps": ("CoreMLExecutionProvider",)}.get(torch_device_type)
    if accelerators and not any(name in available_providers for name in accelerators):
        hint = "pip install onnxruntime-gpu" if torch_device_type == "cuda" else "use an onnxruntime with CoreML"
        return f"no {torch_device_type} provider in this onnxruntime ({hint}); torch on {torch_device_type} is faster"
    return ""


def build_onnxruntime(spec: ModelSpec, shapes: EngineShapes, device: str, threads: int | None,
                      unet_precision: str = "fp32") -> Engine:
    """ONNX Runtime, or OpenVINO with its UNet in `unet_precision` when that measured faster (engines.runtime_race)."""
    import onnxruntime

    from engines.devices import resolve_device
    from engines.runtime_race import fastest_cpu_runtime

    mismatch = onnxruntime_mismatch(resolve_device(device).type, onnxruntime.get_available_providers())
    if mismatch:
        raise EngineUnavailableError(mismatch)
    return fastest_cpu_runtime(spec, shapes, device, threads, unet_precision=unet_precision).engine


def build_torch(spec: ModelSpec, shapes: EngineShapes, device: str, threads: int | None) -> Engine:
    from engines.factory import build_torch_engine

    return build_torch_engine(spec, shapes, device, threads)


DEFAULT_CANDIDATES: tuple[tuple[str, Builder], ...] = (
    ("tensorrt", build_tensorrt),
    ("onnxruntime", build_onnxruntime),
    ("torch", build_torch),
)


def choose_engine(
    spec: ModelSpec, shapes: EngineShapes, device: str = "auto", threads: int | None = None,
    candidates: tuple[tuple[str, Builder], ...] = DEFAULT_CANDIDATES,
) -> AutoChoice:
    """The first candidate that builds; errors a user could not fix by choosing another engine propagate."""
    skipped: list[str] = []
    for name, build in candidates:
        try:
            engine = build(spec, shapes, device, threads)
        except EngineUnavailableError as error:
            skipped.append(f"{name}: {error.reason}")  # without "use --engine X": auto is choosing already
            continue
        except EngineBuildError as error:
            skipped.append(f"{name}: {error}")
            continue
        detail = _detail(engine)
        reason = f"engine auto chose {engine.name}{detail}"
        if skipped:
            reason += " (skipped " + "; ".join(skipped) + ")"
        return AutoChoice(engine, reason)
    raise EngineUnavailableError("no engine can run here: " + "; ".join(skipped))


def _detail(engine: Engine) -> str:
    note = getattr(engine, "selection_note", "")
    if note:
        return f" on {getattr(engine, 'openvino_device', None) or engine.device}: {note}"
    providers = getattr(engine, "providers", None)
    if providers:
        return f" with {providers[0]}"
    return f" on {engine.device}"


def build_auto_engine(spec: ModelSpec, shapes: EngineShapes, device: str, threads: int | None,
                      unet_precision: str = "fp32") -> Engine:
    """Factory entry (`--engine auto`): logs the one-line choice (INFO on `vcam.engines`, shown on stderr by the CLI)
    so the user knows what runs; engines never print, so `vcam bench --json` stays parseable. `unet_precision` is
    OpenVINO's in the CPU race ("fp32", "bf16" or "auto": engines.openvino_engine.resolve_unet_precision)."""
    candidates = tuple((name, functools.partial(build_onnxruntime, unet_precision=unet_precision))
                       if name == "onnxruntime" else (name, build) for name, build in DEFAULT_CANDIDATES)
    choice = choose_engine(spec, shapes, device, threads, candidates)
    log.info("%s", choice.reason)
    return choice.engine
