"""`OpenVinoEngine`: the cached ONNX graphs run by OpenVINO, for Intel CPUs, integrated GPUs and NPUs.

OpenVINO reads the very graphs the ONNX Runtime engine exports and checks (`engines.onnx_engine`: same cache
entry, same export check against torch eager), so it adds no export of its own; what it adds is OpenVINO's own
kernel cache (`CACHE_DIR`), which makes a warm start skip the compilation. On this machine (2 cores, AMX) the tiny
UNet runs within a few percent of ONNX Runtime's speed; the issue's 512x512 figure was 4.5 s against ORT's 4.9 s.

Precision: on the CPU OpenVINO would run fp32 graphs in bf16 where the CPU has AMX / AVX512-BF16. The engine asks
for f32 by default so it gives torch's numbers (the conformance suite's 1e-3); `unet_precision="bf16"` lets the
UNet alone run in bf16 where the CPU computes it natively (AMX-BF16 ran a real-size UNet call ~4x faster than f32
here), and "auto" does so too, as OpenVINO's own default would. The text encoder, the K/V projection and the
autoencoder stay f32: they are a small share of a frame, and the picture's colours pass through the autoencoder.
GPUs and NPUs keep their default (f16), which is what they are fast in.
"""
from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch

from engines.base import EngineShapes, EngineUnavailableError
from engines.engine_cache import EngineCache
from engines.graph_engine import GraphEngine, GraphRunner
from engines.loading import ModelSpec
from engines.onnx_engine import CPU_EXPORT, PORTABLE_EXPORT, OnnxGraphSet, default_threads, open_graph_engine
from engines.onnx_export import GraphSpec

log = logging.getLogger("vcam.engines")
# OpenVINO's compiled-model blobs, inside the graph entry they were compiled from: they go when `vcam models prune`
# removes that entry. (A folder shared by every entry grew to 26 GB here, and nothing could tell whose blobs were
# whose: OpenVINO names them by a hash.)
KERNEL_CACHE_DIR = "openvino-kernels"
# `--device` values OpenVINO adds to auto / cpu; anything OpenVINO lists (GPU.1, NPU) is accepted as well.
ACCELERATOR_PREFERENCE = ("GPU", "NPU")


@functools.lru_cache(maxsize=1)
def openvino_core() -> Any:
    """The process's one `openvino.Core`, created on first use and never destroyed.

    Why one: OpenVINO's CPU plugin (one per Core) points the creating thread's alternate signal stack at a buffer
    of its own and, when the Core goes, puts back the stack it found and frees its buffer (openvinotoolkit/openvino
    PR 11894, for AMX). Two Cores released in creation order leave the thread on a freed stack, and the next signal
    handled there (Ctrl+C, `kill`) is a segmentation fault: `vcam run` died on its stop signal after a second
    OpenVINO engine had come and gone (the auto race, a LoRA rebuild). A Core that lives as long as the process
    never frees its stack. Raises EngineUnavailableError when OpenVINO is not installed.
    """
    try:
        import openvino
    except ImportError as error:
        raise EngineUnavailableError("OpenVINO is not installed; pip install openvino") from error
    return openvino.Core()


def choose_openvino_device(requested: str, available: Sequence[str]) -> str:
    """The OpenVINO device for `--device`: auto prefers an integrated GPU, then an NPU, then the CPU.

    `cpu` is the CPU; `gpu`, `npu`, `gpu.1` (any case) must be listed by OpenVINO; cuda / mps are not its devices.
    """
    wanted = requested.upper()
    if wanted == "AUTO":
        for kind in ACCELERATOR_PREFERENCE:
            found = [name for name in available if name.split(".")[0] == kind]
            if found:
                return found[0]
        return "CPU"
    if wanted in available or (wanted in ("GPU", "NPU") and any(name.startswith(wanted) for name in available)):
        return wanted
    raise EngineUnavailableError(
        f"OpenVINO has no device {requested!r} here (it sees: {', '.join(available)}); use --device auto or cpu, "
        "or --engine torch for cuda / mps")


UnetPrecision = Literal["fp32", "bf16", "auto"]


def cpu_computes_bf16(core: Any) -> bool:
    """Whether OpenVINO's CPU plugin has native bf16 here (AMX-BF16 or AVX512-BF16): its "BF16" capability."""
    return "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")


@dataclass(frozen=True)
class OpenVinoInstall:
    """What `vcam doctor` reports of OpenVINO: its release ("2026.4.1"), its devices, and whether the CPU computes
    bf16 natively (then `--precision auto` runs a bf16 UNet)."""

    release: str
    devices: tuple[str, ...]
    native_bf16: bool


def openvino_install() -> OpenVinoInstall:
    """The installed OpenVINO (EngineUnavailableError when there is none)."""
    core = openvino_core()
    import openvino

    release = openvino.__version__.split("-")[0]  # "2026.4.1-22982-e213a14-releases/2026/4": the release
    return OpenVinoInstall(release, tuple(core.available_devices), cpu_computes_bf16(core))


def resolve_unet_precision(requested: UnetPrecision, device: str, native_bf16: bool) -> tuple[str, str]:
    """The UNet's precision on `device` ("fp32" or "bf16") and, when `requested` cannot be had, one line saying so.

    "auto" is bf16 on a CPU that computes it natively and fp32 elsewhere, silently; "bf16" asked of a CPU without
    it, or of a GPU / NPU (which run their own f16), runs as they do and says it once.
    """
    if device != "CPU":
        note = f"precision bf16 has no effect on OpenVINO's {device}; it runs its default (f16)"
        return "fp32", note if requested == "bf16" else ""
    if native_bf16 and requested in ("bf16", "auto"):
        return "bf16", ""
    if requested == "bf16":
        return "fp32", ("precision bf16 has no effect: this CPU has no native bf16 (AMX or AVX512-BF16); the UNet "
                        "runs fp32")
    return "fp32", ""


def compile_options(device: str, threads: int, precision: str = "fp32") -> dict[str, Any]:
    """Latency-first settings; on the CPU: `threads` threads and f32 math, or bf16 for `precision="bf16"` (see the
    module docstring)."""
    options: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
    if device == "CPU":
        options.update({"INFERENCE_NUM_THREADS": threads,
                        "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32"})
    return options


def kernel_cache_dir(kernel_cache: Path, precision: str) -> Path:
    """Where OpenVINO keeps the compiled blobs of one precision: fp32's in `kernel_cache` itself, as before, bf16's
    in a folder of its own. Why apart: OpenVINO 2026.4's blob key leaves out INFERENCE_PRECISION_HINT, so a bf16
    compile found the f32 blob of the same graph, imported it, and every output was NaN (tests/test_bf16.py)."""
    return kernel_cache if precision == "fp32" else kernel_cache / precision


class OpenVinoRequests(GraphRunner):
    """The four `Engine` calls on OpenVINO compiled models (one infer request each) over one `OnnxGraphSet`."""

    engine_name = "openvino"

    def __init__(self, graphs: OnnxGraphSet, device: str, threads: int, kernel_cache: Path | None,
                 unet_path: str | None = None, unet_precision: str = "fp32") -> None:
        super().__init__(graphs, unet_path)
        core = openvino_core()
        # An INT8 UNet (`unet_path`, engines.quantize) keeps f32 for what it did not quantize, as it was measured.
        self.unet_precision = "fp32" if unet_path else unet_precision
        self.requests = {}
        for name in self.specs:
            precision = self.unet_precision if name == "unet" else "fp32"
            options = compile_options(device, threads, precision)
            if kernel_cache is not None:  # per model and precision: the Core is shared by the whole process
                options["CACHE_DIR"] = str(kernel_cache_dir(kernel_cache, precision))
            self.requests[name] = core.compile_model(self.graph_path(name), device, options).create_infer_request()

    def _run_graph(self, spec: GraphSpec, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        feeds = {
            tensor.name: np.ascontiguousarray(value.detach().to("cpu", tensor.dtype).numpy())
            for tensor, value in zip(spec.inputs, inputs)
        }
        request = self.requests[spec.name]
        request.infer(feeds)
        # Copies: the request reuses its output buffers at the next call.
        return tuple(torch.from_numpy(request.get_tensor(tensor.name).data.copy()) for tensor in spec.outputs)


class OpenVinoEngine(GraphEngine):
    """`Engine` on OpenVINO (see `engines.graph_engine.GraphEngine` for how its runner is swapped)."""

    name = "openvino"

    def __init__(self, graphs: OnnxGraphSet, device: str, threads: int, kernel_cache: Path | None = None,
                 unet_precision: str = "fp32") -> None:
        self.openvino_device = device
        self.kernel_cache = kernel_cache
        self.unet_precision = unet_precision  # "fp32" or "bf16" (resolved: see resolve_unet_precision)
        super().__init__(graphs, threads)

    def make_runner(self, graphs: OnnxGraphSet, unet_path: str | None = None) -> OpenVinoRequests:
        return OpenVinoRequests(graphs, self.openvino_device, self.threads, self.kernel_cache, unet_path,
                                self.unet_precision)


@dataclass(frozen=True)
class OpenVinoOptions:
    """How the engine runs. `threads=None` uses torch's count; `cache_root=None` the user's engine cache."""

    threads: int | None = None
    cache_root: Path | None = None
    check_in_background: bool = True  # as in engines.onnx_engine.OnnxRuntimeOptions
    unet_precision: UnetPrecision = "fp32"  # see resolve_unet_precision


def film_unet(spec: ModelSpec) -> bool:
    """Whether the model's UNet scales its features by the time embedding (diffusers' resnet_time_scale_shift
    "scale_shift", FiLM; the trained tiny model does). OpenVINO 2026.4's CPU plugin crashes the process
    (segmentation fault, nothing to catch) compiling the opset-23 graph of such a UNet with f32 precision: ONNX
    GroupNormalization followed by a per-sample scale and shift. The opset-17 graph (the norm as
    InstanceNormalization) compiles, so such a model takes that one."""
    from engines.loading import resolve_model

    resolved = resolve_model(spec)
    config = resolved.path / "unet" / "config.json"
    if resolved.kind != "folder" or not config.is_file():  # single-file checkpoints are SD 1.x / 2.x: no FiLM
        return False
    return json.loads(config.read_text()).get("resnet_time_scale_shift") == "scale_shift"


def create_openvino_engine(
    spec: ModelSpec, shapes: EngineShapes, device: str = "auto", threads: int | None = None,
    options: OpenVinoOptions = OpenVinoOptions(),
) -> OpenVinoEngine:
    """The OpenVINO engine over the cached ONNX graphs (exported and checked on a miss, as for ONNX Runtime).

    Raises EngineUnavailableError when OpenVINO is missing or has no such device. A bf16 that cannot be had is
    said once (WARNING on `vcam.engines`) and the UNet runs fp32.
    """
    core = openvino_core()
    ov_device = choose_openvino_device(device, core.available_devices)
    unet_precision, note = resolve_unet_precision(
        options.unet_precision, ov_device,
        options.unet_precision != "fp32" and ov_device == "CPU" and cpu_computes_bf16(core))
    if note:
        log.warning(note)
    threads = default_threads(threads if threads is not None else options.threads)
    cache = EngineCache(options.cache_root)
    # OpenVINO reads the opset-23 graphs (Attention nodes) as well, but not every one: see `film_unet`.
    plan = [PORTABLE_EXPORT] if film_unet(spec) else [CPU_EXPORT, PORTABLE_EXPORT]
    engine = open_graph_engine(
        lambda graphs: OpenVinoEngine(graphs, ov_device, threads, graphs.directory / KERNEL_CACHE_DIR, unet_precision),
        spec, shapes, cache, plan, threads, options.check_in_background, runtime="OpenVINO")
    assert isinstance(engine, OpenVinoEngine)
    return engine


def build_openvino_engine(spec: ModelSpec, shapes: EngineShapes, device: str, threads: int | None,
                          unet_precision: UnetPrecision = "fp32") -> OpenVinoEngine:
    """Factory entry (`--engine openvino`)."""
    return create_openvino_engine(spec, shapes, device, threads, OpenVinoOptions(unet_precision=unet_precision))
