"""Export the model's four calls to static-shape ONNX graphs, each checked against torch eager before use.

ONNX Runtime and TensorRT both run these graphs, so an export that silently drifts from the torch model would
make every accelerated engine wrong at once. Each graph is therefore run on random inputs right after export
and compared with the torch call it came from; a difference above tolerance is a build error, not a warning.

The graphs wrap the torch engine's own calls (not the raw diffusers modules), so scaling factors, TAESD vs VAE
and prediction conventions are exported exactly as the torch engine computes them. The UNet is two graphs
(`unet_specs`): `cross_kv`, the cross-attention keys and values of the prompt, run once per prompt by the engines,
and the UNet over those keys and values; the UNet's check compares the pair with the plain torch UNet.

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
from typing import TYPE_CHECKING, Callable, Iterator, Literal, Sequence

import torch

from engines.base import EngineShapes, ModelError

if TYPE_CHECKING:
    from engines.kv_cache import CrossAttentionKV

# Bump whenever what we export (wrappers, names, options) changes: invalidates caches.
# 2: the UNet graph takes cross-attention keys / values, which the cross_kv graph computes from the embeddings.
EXPORTER_VERSION = "2"
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

    name: str  # "text_encoder", "image_encoder", "image_decoder", "cross_kv", "unet"
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
    # (heads, head_dim) of each cross-attention layer whose keys / values the UNet graph takes as inputs
    # (engines.kv_cache order); empty: the UNet graph takes the embeddings (a layer kv_cache cannot serve).
    cross_attention: tuple[tuple[int, int], ...] = ()

    def __post_init__(self) -> None:  # read back from a build report's JSON as lists
        object.__setattr__(self, "cross_attention", tuple(tuple(layer) for layer in self.cross_attention))


@dataclass(frozen=True)
class OnnxExportOptions:
    opset: int = DEFAULT_OPSET
    exporter: Literal["torchscript", "dynamo"] = "torchscript"
    tolerance: float = FP32_TOLERANCE


GRAPH_COUNT = 5  # what `graph_specs` returns at most: text encoder, image encoder, image decoder, cross_kv, UNet


def predict_noise_spec(shapes: EngineShapes, dims: ModelDims) -> GraphSpec:
    """`Engine.predict_noise`'s inputs and output at these shapes: latents, timesteps, embeddings -> noise."""
    h, w = shapes.height // dims.vae_scale_factor, shapes.width // dims.vae_scale_factor
    c, b = dims.latent_channels, shapes.unet_batch
    return GraphSpec(
        "unet",
        (
            TensorSpec("latents", (b, c, h, w), torch.float32),
            TensorSpec("timesteps", (b,), torch.int64),
            TensorSpec("embeddings", (b, dims.text_tokens, dims.embed_dim), torch.float32),
        ),
        (TensorSpec("noise", (b, c, h, w), torch.float32),),
    )


def keys_values_specs(shapes: EngineShapes, dims: ModelDims) -> tuple[TensorSpec, ...]:
    """cross_key_0, cross_value_0, cross_key_1, ...: each layer's (B, heads, tokens, head_dim), B the UNet batch."""
    return tuple(
        TensorSpec(f"cross_{kind}_{index}", (shapes.unet_batch, heads, dims.text_tokens, head_dim), torch.float32)
        for index, (heads, head_dim) in enumerate(dims.cross_attention) for kind in ("key", "value"))


def unet_specs(shapes: EngineShapes, dims: ModelDims) -> tuple[GraphSpec, ...]:
    """The UNet's graphs: `cross_kv` (embeddings -> every cross-attention layer's keys and values, run once per
    prompt) and the UNet over those keys / values; or, for a model without `dims.cross_attention`, the UNet over the
    embeddings alone.

    Keys and values are graph inputs (static shapes, one pair per layer) rather than a cache inside the UNet graph:
    an ONNX graph is a pure function, so what is kept across calls lives with the runner that feeds it. They come
    as (B, heads, tokens, head_dim), the layout attention reads, so the UNet graph reshapes nothing of them per call;
    B is the UNet batch, as the embeddings have it (rows may hold different prompts: RCFG's negative prompt, a
    blend), so every row is projected, once per prompt."""
    plain = predict_noise_spec(shapes, dims)
    if not dims.cross_attention:
        return (plain,)
    latents, timesteps, embeddings = plain.inputs
    keys_values = keys_values_specs(shapes, dims)
    return (GraphSpec("cross_kv", (embeddings,), keys_values),
            GraphSpec("unet", (latents, timesteps, *keys_values), plain.outputs))


def graph_specs(shapes: EngineShapes, dims: ModelDims) -> tuple[GraphSpec, ...]:
    """The graphs an engine of these static shapes needs, with every tensor's exact shape."""
    h, w = shapes.height // dims.vae_scale_factor, shapes.width // dims.vae_scale_factor
    c, f = dims.latent_channels, shapes.frame_batch
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
        *unet_specs(shapes, dims),
    )


CheckInputs = Callable[[int], "tuple[tuple[torch.Tensor, ...], torch.Tensor]"]


class CallAsModule(torch.nn.Module):
    """Wraps a torch engine call (a bound method over its modules) so the exporter can trace it.

    `modules` are registered so the exporter sees the weights as parameters (constant-folded into the graph).
    `check_inputs(seed) -> (graph inputs, torch output)`, when given, makes the export check's example: for a graph
    whose inputs another graph computes (the UNet's keys / values), so it is checked against the plain torch call.
    """

    def __init__(self, call: Callable[..., torch.Tensor], modules: Sequence[torch.nn.Module] = (),
                 check_inputs: CheckInputs | None = None) -> None:
        super().__init__()
        self.call = call
        self.traced_modules = torch.nn.ModuleList(modules)
        self.check_inputs = check_inputs

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.call(*inputs)


def unet_calls(predict_noise: Callable[..., torch.Tensor], kv: "CrossAttentionKV", shapes: EngineShapes,
               dims: ModelDims, modules: Sequence[torch.nn.Module]) -> dict[str, CallAsModule]:
    """The UNet's graphs as calls to export (see `unet_specs`): with `dims.cross_attention`, `cross_kv` is
    `kv.project` and the UNet is `predict_noise` with `kv` serving the layers their keys / values from the graph's
    inputs (`kv` installed on the UNet of `predict_noise`); the UNet's check compares it with the plain
    `predict_noise` on the embeddings the keys / values were projected from."""
    if not dims.cross_attention:
        return {"unet": CallAsModule(predict_noise, modules)}
    plain = predict_noise_spec(shapes, dims)

    def over_keys_values(latents: torch.Tensor, timesteps: torch.Tensor, *keys_values: torch.Tensor) -> torch.Tensor:
        # Never read (every cross-attention layer is served `keys_values`), so it is no input of the graph; were
        # one read, the graph would hold zeros for the prompt and fail its check.
        stand_in = latents.new_zeros(plain.inputs[2].shape)  # (B, tokens, D)
        kv.serve(keys_values, stand_in)
        return predict_noise(latents, timesteps, stand_in)

    def check_inputs(seed: int) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        latents, timesteps, embeddings = example_inputs(plain, seed)
        keys_values = [tensor.contiguous() for tensor in kv.project(embeddings)]
        return (latents, timesteps, *keys_values), predict_noise(latents, timesteps, embeddings)

    return {"cross_kv": CallAsModule(lambda embeddings: tuple(kv.project(embeddings)), modules),
            "unet": CallAsModule(over_keys_values, modules, check_inputs)}


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


def run_onnx_cpu(path: Path, spec: GraphSpec, inputs: tuple[torch.Tensor, ...], threads: int
                 ) -> tuple[torch.Tensor, ...]:
    """Run a graph once on ONNX Runtime's CPU provider (the reference runtime for the export check): its outputs."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feeds = {tensor.name: value.numpy() for tensor, value in zip(spec.inputs, inputs)}
    return tuple(torch.from_numpy(output) for output in session.run([t.name for t in spec.outputs], feeds))


def check_graph(
    path: Path, spec: GraphSpec, reference: torch.Tensor | Sequence[torch.Tensor], inputs: tuple[torch.Tensor, ...],
    options: OnnxExportOptions, threads: int,
) -> float:
    """Max abs difference between the exported graph and torch eager on `inputs` (over all its outputs, in the
    spec's order); above tolerance -> error."""
    try:
        outputs = run_onnx_cpu(path, spec, inputs, threads)
    except Exception as error:  # noqa: BLE001 - ONNX Runtime raises its own many types; one line and a way out
        raise EngineBuildError(
            f"the exported {spec.name} graph does not load in ONNX Runtime ({type(error).__name__}); "
            "use --engine torch for this model"
        ) from error
    references = (reference,) if isinstance(reference, torch.Tensor) else tuple(reference)
    for output, expected in zip(outputs, references, strict=True):
        if tuple(output.shape) != tuple(expected.shape):
            raise EngineBuildError(
                f"the exported {spec.name} graph returns shape {tuple(output.shape)}, torch {tuple(expected.shape)}; "
                "use --engine torch for this model"
            )
    # torch's max, not Python's: it propagates a NaN from any output
    difference = float(torch.stack([(output - expected.float()).abs().max()
                                    for output, expected in zip(outputs, references)]).max())
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
        with torch.no_grad():
            if module.check_inputs is not None:
                inputs, reference = module.check_inputs(seed)
            else:
                inputs = example_inputs(spec, seed, token_limit)
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
