"""`--precision int8`: the UNet quantized to INT8 (full static: weights and activations), calibrated on the
stream's own latents, for the engines over the cached ONNX graphs (ONNX Runtime, OpenVINO).

Static INT8 needs the range of every activation, and those ranges depend on what the UNet sees: this model, this
prompt, these camera latents at these timesteps. So nothing is guessed at build time: the engine starts in fp32,
records the inputs of the stream's first `calibration_calls` UNet calls, quantizes on a background thread (the
stream keeps running in fp32 meanwhile) and then swaps the INT8 UNet in. What is recorded is what the UNet graph
takes (`GraphRunner.unet_inputs`): with a `cross_kv` graph, the keys / values of the prompt, not its embeddings;
the `cross_kv` graph itself stays fp32 (it runs once per prompt). The quantized graph is an engine-cache
entry keyed by the fp32 graphs, so later starts use it from the first frame; its calibration is the first run's.

Quantization: ONNX Runtime's `quantize_static` in QDQ form (QuantizeLinear / DequantizeLinear pairs around
Conv / MatMul / Gemm), per-channel symmetric int8 weights, asymmetric uint8 activations from min / max ranges
(the ORT quantization guide's CPU recommendation: U8S8 with VNNI / AMX). OpenVINO reads the same QDQ graph and
runs it as INT8. Only those three operator types are quantized: normalisation and softmax stay in float (and in
the CPU export's graphs so does attention itself, one `Attention` node), which keeps the output close to fp32
(see the README's INT8 figures).
"""
from __future__ import annotations

import dataclasses
import logging
import threading
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from engines.engine_cache import EngineCache, EngineCacheKey
from engines.graph_engine import ForwardsToRunner
from engines.onnx_export import first_line

INT8_UNET = "unet-int8.onnx"
CALIBRATION_CALLS = 8  # UNet calls recorded from the stream (T per frame: 8 calls = 4 frames at 2 steps)
QUANTIZED_OPS = ("Conv", "MatMul", "Gemm")

log = logging.getLogger("vcam.engines")
UnetFeeds = dict[str, torch.Tensor]  # one UNet graph call's inputs by name: latents, timesteps, keys / values


def int8_cache_key(graphs_key: EngineCacheKey) -> EngineCacheKey:
    """The INT8 UNet's key: the fp32 graphs' key with precision int8 (so a new export is a new INT8 entry too)."""
    import onnxruntime

    return dataclasses.replace(graphs_key, precision="int8", backend="onnx-int8",
                               backend_version=f"{graphs_key.backend_version}+quant-ort{onnxruntime.__version__}")


def quantize_unet(fp32_unet: Path, calibration: Sequence[UnetFeeds], output: Path) -> dict:
    """Write the QDQ INT8 UNet of `fp32_unet` to `output`, activation ranges from `calibration` (the graph's inputs
    by name, one dict a call); a small report.

    Raises EngineBuildError (one line) when ONNX Runtime cannot quantize the graph.
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from engines.onnx_export import EngineBuildError

    feeds = [{name: np.ascontiguousarray(value.detach().cpu().numpy()) for name, value in inputs.items()}
             for inputs in calibration]

    class Recorded(CalibrationDataReader):
        """The recorded calls; `set_range` lets ORT calibrate one call at a time (CalibStridedMinMax)."""

        def __init__(self) -> None:
            self.remaining = iter(feeds)

        def __len__(self) -> int:
            return len(feeds)

        def set_range(self, start_index: int, end_index: int) -> None:
            self.remaining = iter(feeds[start_index:end_index])

        def get_next(self) -> dict | None:
            return next(self.remaining, None)

    big = fp32_unet.stat().st_size + sum(p.stat().st_size for p in fp32_unet.parent.glob("*.data")) > 1_900_000_000
    try:
        quantize_static(
            str(fp32_unet), str(output), Recorded(), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, op_types_to_quantize=list(QUANTIZED_OPS),
            use_external_data_format=big,
            # Ranges merged after each call: memory for one call's activations (512x512 SD: GBs), not all of them.
            extra_options={"CalibStridedMinMax": 1},
        )
    except Exception as error:  # the quantizer raises many types; the user needs one line
        raise EngineBuildError(
            f"INT8 quantization of the UNet failed ({first_line(error)}); use --precision fp32") from error
    return {"calibration_calls": len(feeds), "quantized_ops": list(QUANTIZED_OPS), "format": "QDQ U8S8"}


class CalibrationRecorder(ForwardsToRunner):
    """A runner that passes every call to `runner` (a `GraphRunner`) and keeps copies of the UNet graph's inputs of
    the first `calls` calls; then calls `on_full(recorded)` once (on the inference thread: it must return at once,
    e.g. by starting a thread)."""

    def __init__(self, runner: Any, calls: int, on_full: Callable[[list[UnetFeeds]], None]) -> None:
        self.runner = runner
        self.device = runner.device
        self.calls = calls
        self.on_full = on_full
        self.recorded: list[UnetFeeds] = []

    def predict_noise(self, latents: torch.Tensor, timesteps: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        if len(self.recorded) < self.calls:
            inputs = self.runner.unet_inputs(latents, timesteps, embeddings)  # keys / values: projected once
            names = [tensor.name for tensor in self.runner.specs["unet"].inputs]
            self.recorded.append({name: value.detach().cpu().clone() for name, value in zip(names, inputs)})
            if len(self.recorded) == self.calls:
                self.on_full(list(self.recorded))
        return self.runner.predict_noise(latents, timesteps, embeddings)


def use_int8_unet(engine: Any, calibration_calls: int = CALIBRATION_CALLS, in_background: bool = True) -> str:
    """Put `engine` (a `GraphEngine`) on the INT8 UNet: at once when it is cached, else after calibration.

    Returns one line saying which (the caller logs it). Without a cached entry the engine keeps running fp32
    until `calibration_calls` UNet calls were recorded and the quantized graph is built; `engine.int8_ready` is
    set when the INT8 UNet is in use (or the build failed: then it stays fp32 and says so in one line).
    """
    cache = EngineCache(engine.graphs.cache_entry.path.parent)
    key = int8_cache_key(engine.graphs.cache_key)
    engine.int8_ready = threading.Event()
    if not cache.verify(key):
        engine.use_runner(engine.make_runner(engine.graphs, unet_path=str(cache.entry_dir(key) / INT8_UNET)))
        engine.int8_ready.set()
        return "precision int8: the cached INT8 UNet is in use"
    fp32_runner = engine.runner
    graphs = engine.graphs

    def quantize_and_swap(recorded: list[UnetFeeds]) -> None:
        try:
            entry = cache.get_or_build(key, lambda directory: quantize_unet(
                graphs.path("unet"), recorded, directory / INT8_UNET))
            engine.use_runner(engine.make_runner(graphs, unet_path=str(entry.path / INT8_UNET)))
            log.info("precision int8: the INT8 UNet is in use from now on")
        except Exception as error:  # noqa: BLE001 - keep the stream running in fp32 and say why
            engine.use_runner(fp32_runner)
            log.warning(f"precision int8: {first_line(error)}; the UNet keeps running in fp32")
        finally:
            engine.int8_ready.set()

    def on_full(recorded: list[UnetFeeds]) -> None:
        if in_background:
            threading.Thread(target=quantize_and_swap, args=(recorded,), name="int8-quantize", daemon=True).start()
        else:
            quantize_and_swap(recorded)

    engine.use_runner(CalibrationRecorder(fp32_runner, calibration_calls, on_full))
    return (f"precision int8: the UNet runs in fp32 for the first {calibration_calls} calls, which calibrate its "
            "INT8 ranges; the INT8 UNet is built in the background and cached for later starts")
