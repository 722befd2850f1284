"""Export the model's four calls to static-shape ONNX graphs, each checked against torch eager before use.

ONNX Runtime and TensorRT both run these graphs, so an export that silently drifts from the torch model would
make every accelerated engine wrong at once. Each graph is therefore run on random inputs right after export
and compared with the torch call it came from; a difference above tolerance is a build error, not a warning.

The graphs wrap the torch engine's own calls (not the raw diffusers modules), so scaling factors, TAESD vs VAE
and prediction conventions are exported exactly as the torch engine computes them.

Exporter: the TorchScript-based `torch.onnx.export(..., dynamo=False)`. With torch 2.13 + diffusers 0.42 it
exports the tiny UNet in ~2 s against ~10 s for the dynamo exporter, with the same accuracy (both ~2e-6) and
ORT speed; the dynamo exporter remains available through `OnnxExportOptions.exporter`.
"""
from __future__ import annotations

import contextlib
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Literal, Sequence

import torch

from engines.base import EngineShapes, ModelError

EXPORTER_VERSION = "1"  # bump whenever what we export (wrappers, names, options) changes: invalidates caches
DEFAULT_OPSET = 17
FP32_TOLERANCE = 1e-3
TEXT_TOKENS = 77


class EngineBuildError(ModelError):
    """Exporting or building an engine failed (or its check against torch eager did); one line, names the fix."""


def first_line(error: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (exporters and compilers raise pages), for one-line errors."""
    lines = str(error).strip().splitlines()
    return (lines[0] if lines else type(error).__name__)[:limit]


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, static shape, dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype


@dataclass(frozen=True)
class GraphSpec:
    """One exported graph: its file name and its static inputs / outputs."""

    name: str  # "unet", "image_encoder", "image_decoder", "text_encoder"
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def file_name(self) -> str:
        return f"{self.name}.onnx"


@dataclass(frozen=True)
class ModelDims:
    """The few model dimensions the graph shapes depend on (read from the torch engine)."""

    latent_channels: int
    vae_scale_factor: int
    embed_dim: int  # text encoder hidden size = UNet cross-attention dim
    text_tokens: int = TEXT_TOKENS


@dataclass(frozen=True)
class OnnxExportOptions:
    opset: int = DEFAULT_OPSET
    exporter: Literal["torchscript", "dynamo"] = "torchscript"
    tolerance: float = FP32_TOLERANCE


GRAPH_COUNT = 4  # what `graph_specs` returns: text encoder, image encoder, image decoder, UNet


def graph_specs(shapes: EngineShapes, dims: ModelDims) -> tuple[GraphSpec, ...]:
    """The four graphs an engine of these static shapes needs, with every tensor's exact shape."""
    h, w = shapes.height // dims.vae_scale_factor, shapes.width // dims.vae_scale_factor
    c, f, b = dims.latent_channels, shapes.frame_batch, shapes.unet_batch
    f32, i64 = torch.float32, torch.int64
    return (
        GraphSpec(
            "text_encoder",
            (TensorSpec("input_ids", (shapes.text_batch, dims.text_tokens), i64),),
            (TensorSpec("embeddings", (shapes.text_batch, dims.text_tokens, dims.embed_dim), f32),),
        ),
        GraphSpec(
            "image_encoder",
            (TensorSpec("images", (f, 3, shapes.height, shapes.width), f32),),
            (TensorSpec("latents", (f, c, h, w), f32),),
        ),
        GraphSpec(
            "image_decoder",
            (TensorSpec("latents", (f, c, h, w), f32),),
            (TensorSpec("images", (f, 3, shapes.height, shapes.width), f32),),
        ),
        GraphSpec(
            "unet",
            (
                TensorSpec("latents", (b, c, h, w), f32),
                TensorSpec("timesteps", (b,), i64),
                TensorSpec("embeddings", (b, dims.text_tokens, dims.embed_dim), f32),
            ),
            (TensorSpec("noise", (b, c, h, w), f32),),
        ),
    )


class CallAsModule(torch.nn.Module):
    """Wraps a torch engine call (a bound method over its modules) so the exporter can trace it.

    `modules` are registered so the exporter sees the weights as parameters (constant-folded into the graph).
    """

    def __init__(self, call: Callable[..., torch.Tensor], modules: Sequence[torch.nn.Module] = ()) -> None:
        super().__init__()
        self.call = call
        self.traced_modules = torch.nn.ModuleList(modules)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.call(*inputs)


def example_inputs(spec: GraphSpec, seed: int, token_limit: int = 100) -> tuple[torch.Tensor, ...]:
    """Random inputs of the graph's static shapes: images in [-1, 1], timesteps in 0..999, ids < token_limit."""
    generator = torch.Generator().manual_seed(seed)
    tensors = []
    for tensor in spec.inputs:
        if tensor.name == "timesteps":
            tensors.append(torch.randint(0, 1000, tensor.shape, generator=generator, dtype=torch.int64))
        elif tensor.name == "input_ids":
            tensors.append(torch.randint(0, token_limit, tensor.shape, generator=generator, dtype=torch.int64))
        elif tensor.name == "images":
            tensors.append(torch.rand(tensor.shape, generator=generator) * 2 - 1)
        else:
            tensors.append(torch.randn(tensor.shape, generator=generator))
    return tuple(tensors)


@contextlib.contextmanager
def _quiet_logger(name: str) -> Iterator[None]:
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def export_graph(
    module: torch.nn.Module, spec: GraphSpec, inputs: tuple[torch.Tensor, ...], path: Path, options: OnnxExportOptions
) -> None:
    """Write `module` traced at `inputs` (static shapes, constant-folded) to `path` as one self-contained ONNX file."""
    input_names = [tensor.name for tensor in spec.inputs]
    output_names = [tensor.name for tensor in spec.outputs]
    try:
        with torch.no_grad(), warnings.catch_warnings(), _quiet_logger("torch.onnx"):
            # The tracer warns about every shape check in diffusers; with static shapes they are constants by design.
            # The dynamo exporter logs one line per optional torchvision operator it does not find.
            warnings.simplefilter("ignore")
            if options.exporter == "dynamo":
                program = torch.onnx.export(
                    module, inputs, dynamo=True, opset_version=options.opset,
                    input_names=input_names, output_names=output_names, verbose=False,
                )
                program.save(str(path))
            else:
                torch.onnx.export(
                    module, inputs, str(path), dynamo=False, opset_version=options.opset,
                    input_names=input_names, output_names=output_names, do_constant_folding=True,
                )
    except Exception as error:  # the exporters raise many types; the user needs one line and the graph name
        raise EngineBuildError(
            f"ONNX export of the {spec.name} failed ({first_line(error)}); use --engine torch for this model"
        ) from error


def run_onnx_cpu(path: Path, spec: GraphSpec, inputs: tuple[torch.Tensor, ...], threads: int) -> torch.Tensor:
    """Run a graph once on ONNX Runtime's CPU provider (the reference runtime for the export check)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feeds = {tensor.name: value.numpy() for tensor, value in zip(spec.inputs, inputs)}
    return torch.from_numpy(session.run([spec.outputs[0].name], feeds)[0])


def check_graph(
    path: Path, spec: GraphSpec, reference: torch.Tensor, inputs: tuple[torch.Tensor, ...],
    options: OnnxExportOptions, threads: int,
) -> float:
    """Max abs difference between the exported graph and torch eager on `inputs`; above tolerance -> error."""
    try:
        output = run_onnx_cpu(path, spec, inputs, threads)
    except Exception as error:  # noqa: BLE001 - ONNX Runtime raises its own many types; one line and a way out
        raise EngineBuildError(
            f"the exported {spec.name} graph does not load in ONNX Runtime ({type(error).__name__}); "
            "use --engine torch for this model"
        ) from error
    if tuple(output.shape) != tuple(reference.shape):
        raise EngineBuildError(
            f"the exported {spec.name} graph returns shape {tuple(output.shape)}, torch {tuple(reference.shape)}; "
            "use --engine torch for this model"
        )
    difference = float((output - reference.float()).abs().max())
    if not difference <= options.tolerance:  # also catches NaN
        raise EngineBuildError(
            f"the exported {spec.name} graph differs from torch by {difference:.2e} (> {options.tolerance:g}); "
            "use --engine torch for this model"
        )
    return difference


BUILD_LOG = logging.getLogger("vcam.engines.build")


def log_build_step(done: int, total: int, what: str) -> None:
    """A step of a long build, for whoever shows progress: `vcam bench` draws a bar from these records
    (`record.build_step` = (steps done, steps in all, what is being built now)); the log file keeps them."""
    BUILD_LOG.debug("ONNX Runtime build, step %d of %d: %s", done + 1, total, what,
                    extra={"build_step": (done, total, what)})


def export_checked_graphs(
    calls: dict[str, CallAsModule], specs: Sequence[GraphSpec], directory: Path,
    options: OnnxExportOptions, threads: int, token_limit: int, steps_before: int = 0,
) -> dict:
    """Export every graph in `specs` into `directory`, check each against its torch call; the build report.

    The report records, per graph, the max abs difference and the export seconds: the evidence that the
    cached graphs were checked, kept with them in the cache manifest. Each graph is a build step (`log_build_step`)
    after `steps_before` earlier ones.
    """
    report: dict = {"exporter": options.exporter, "opset": options.opset, "tolerance": options.tolerance,
                    "graphs": {}}
    started = time.perf_counter()
    for seed, spec in enumerate(specs):
        log_build_step(steps_before + seed, steps_before + len(specs),
                       f"exporting and checking the {spec.name} graph ({options.exporter})")
        module = calls[spec.name].eval()
        inputs = example_inputs(spec, seed, token_limit)
        with torch.no_grad():
            reference = module(*inputs)
        graph_started = time.perf_counter()
        path = directory / spec.file_name
        export_graph(module, spec, inputs, path, options)
        export_seconds = time.perf_counter() - graph_started
        difference = check_graph(path, spec, reference, inputs, options, threads)
        report["graphs"][spec.name] = {
            "max_abs_diff": difference,
            "export_seconds": round(export_seconds, 3),
            "bytes": path.stat().st_size,
        }
    report["export_seconds"] = round(time.perf_counter() - started, 3)
    return report
