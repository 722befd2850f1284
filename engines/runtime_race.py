"""ONNX Runtime or OpenVINO on this CPU: measured once at build time, the answer cached with the engine.

Both run the same cached graphs (engines.onnx_engine, engines.openvino_engine) and which one is faster depends on
the CPU (AMX / VNNI, cache sizes), the model size and the thread count: on this 2-core AMX machine the tiny UNet
runs within noise on both while the issue measured OpenVINO ~10% faster at 512x512. So `--engine auto` builds both,
times their UNet call alternately (the call that dominates a frame), keeps the faster, and stores the timings in an
engine-cache entry keyed by the graphs, both runtimes' versions, the device, the thread count and OpenVINO's UNet
precision: the next start reads the answer instead of measuring again. With a bf16 UNet (`unet_precision`, where
the CPU computes bf16 natively; engines.openvino_engine) OpenVINO races in bf16 against ONNX Runtime's fp32.
"""
from __future__ import annotations

import dataclasses
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from engines.base import EngineShapes, EngineUnavailableError
from engines.graph_engine import GraphEngine
from engines.engine_cache import EngineCache, log
from engines.loading import ModelSpec
from engines.onnx_engine import OnnxRuntimeEngine, OnnxRuntimeOptions, create_onnxruntime_engine
from engines.onnx_export import example_inputs, first_line, predict_noise_spec

ROUNDS = 3  # alternated UNet calls per runtime after one warm-up call each; the medians are compared
CHOICE_FILE = "choice.json"


@dataclass(frozen=True)
class RaceResult:
    """The faster engine and what was measured (seconds per UNet call, medians of alternated calls)."""

    engine: GraphEngine
    seconds: dict[str, float]  # runtime name -> median seconds per UNet call
    measured: bool  # False: the answer was read from the engine cache
    openvino_precision: str = "fp32"  # the UNet precision OpenVINO raced in ("fp32" or "bf16")

    @property
    def summary(self) -> str:
        """One line: `openvino 1.12x the UNet speed of onnxruntime (measured at build time)` or `(cached
        measurement)`; a bf16 OpenVINO is `openvino (bf16 UNet)`."""
        label = {"openvino": f"openvino ({self.openvino_precision} UNet)" if self.openvino_precision != "fp32"
                 else "openvino"}
        winner = self.engine.name
        (loser,) = [name for name in self.seconds if name != winner]
        ratio = self.seconds[loser] / self.seconds[winner]
        when = "measured at build time" if self.measured else "cached measurement"
        return f"{label.get(winner, winner)} {ratio:.2f}x the UNet speed of {label.get(loser, loser)} ({when})"


def time_unet_calls(engines: dict[str, GraphEngine], unet_inputs: tuple, rounds: int = ROUNDS) -> dict[str, float]:
    """Median seconds of one UNet call per engine, calls alternated so a load change hits both sides alike."""
    for engine in engines.values():
        engine.predict_noise(*unet_inputs)  # first calls allocate and project the keys / values: not timed
    times: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(rounds):
        for name, engine in engines.items():
            started = time.perf_counter()
            engine.predict_noise(*unet_inputs)
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def race_key(onnx_engine: OnnxRuntimeEngine, openvino_device: str, openvino_precision: str = "fp32"):
    """The cache key of the measurement: the graphs' key plus both runtimes, the OpenVINO device, the threads and
    OpenVINO's UNet precision (a bf16 race is a different race; the fp32 one keeps its old key)."""
    from importlib.metadata import version

    key = onnx_engine.graphs.cache_key
    precision = "" if openvino_precision == "fp32" else f"+{openvino_precision}"
    return dataclasses.replace(
        key, backend="runtime-race",
        backend_version=(f"{key.backend_version}+ov{version('openvino')}+{openvino_device}"
                         f"+threads{onnx_engine.threads}{precision}"),
    )


def fastest_cpu_runtime(
    spec: ModelSpec, shapes: EngineShapes, device: str, threads: int | None, cache_root: Path | None = None,
    unet_precision: str = "fp32",
) -> RaceResult:
    """ONNX Runtime, or OpenVINO when it measured faster here. ORT on a GPU provider, or no OpenVINO: ORT unraced.
    `unet_precision` is OpenVINO's (engines.openvino_engine.resolve_unet_precision); ONNX Runtime runs fp32.

    Raises what building the ONNX Runtime engine raises (EngineUnavailableError, EngineBuildError).
    """
    from engines.openvino_engine import OpenVinoOptions, create_openvino_engine

    onnx_engine = create_onnxruntime_engine(spec, shapes, device, threads, OnnxRuntimeOptions(cache_root=cache_root))
    if onnx_engine.device.type != "cpu":
        return RaceResult(onnx_engine, {}, measured=False)
    try:
        openvino_engine = create_openvino_engine(spec, shapes, device, onnx_engine.threads,
                                                 OpenVinoOptions(cache_root=cache_root,
                                                                 unet_precision=unet_precision))
    except EngineUnavailableError:
        return RaceResult(onnx_engine, {}, measured=False)
    except Exception as error:  # noqa: BLE001 - OpenVINO failing must not cost auto its ONNX Runtime engine
        log.warning(f"engine auto: OpenVINO could not be built ({first_line(error)}); ONNX Runtime runs")
        return RaceResult(onnx_engine, {}, measured=False)
    engines: dict[str, GraphEngine] = {"onnxruntime": onnx_engine, "openvino": openvino_engine}
    unet_call = predict_noise_spec(onnx_engine.graphs.shapes, onnx_engine.graphs.dims)  # what predict_noise takes
    cache = EngineCache(cache_root)

    def measure(directory: Path) -> dict:
        seconds = time_unet_calls(engines, example_inputs(unet_call, seed=0))
        (directory / CHOICE_FILE).write_text(json.dumps(seconds, sort_keys=True))
        return {"seconds": seconds}

    ov_precision = openvino_engine.unet_precision
    entry = cache.get_or_build(race_key(onnx_engine, openvino_engine.openvino_device, ov_precision), measure)
    seconds = {name: float(value) for name, value in entry.build_report["seconds"].items()}
    winner = min(seconds, key=seconds.__getitem__)
    result = RaceResult(engines[winner], seconds, measured=entry.built, openvino_precision=ov_precision)
    engines[winner].selection_note = result.summary
    return result
