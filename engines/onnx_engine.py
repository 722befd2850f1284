"""`OnnxRuntimeEngine`: the model's four calls as checked static-shape ONNX graphs run by ONNX Runtime.

The graphs come from the engine cache. On a warm start nothing of the torch model is loaded: the model's files
are hashed (cheap: `resolve_model`), the cached entry is verified, and the tokenizer and model dimensions saved
with it are read back, so the first frame comes within seconds. On a miss the torch engine is loaded once on the
CPU in fp32, every graph is exported and checked against it, and the entry is written for next time. The UNet is
two graphs (`cross_kv` and the UNet over its keys and values, see `engines.onnx_export.unet_specs`).
"""
from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from engines.base import EngineShapes, EngineUnavailableError, NoiseScheduleConfig
from engines.graph_engine import GraphEngine, GraphRunner
from engines.hf_imports import hf_imports
from engines.engine_cache import CacheEntry, EngineCache, EngineCacheKey, LoraFingerprint, file_sha256
from engines.loading import ModelSpec, resolve_model
from engines.onnx_export import (
    EXPORTER_VERSION, GRAPH_COUNT, TEXT_TOKENS, CallAsModule, EngineBuildError, GraphSpec, ModelDims,
    OnnxExportOptions, export_checked_graphs, graph_specs, log_build_step, first_line, unet_calls,
)

# Best first. ORT assigns each node to the first provider in the list that supports it, CPU catching the rest.
PROVIDER_PREFERENCE: tuple[str, ...] = (
    "TensorrtExecutionProvider", "CUDAExecutionProvider", "DmlExecutionProvider", "CoreMLExecutionProvider",
    "CPUExecutionProvider",
)
CUDA_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
TOKENIZER_DIR = "tokenizer"
# On the CPU provider the dynamo exporter at opset 23 emits ONNX `Attention` nodes, which ORT runs faster than the
# MatMul / Softmax chains of the TorchScript exporter (tiny UNet, batch 2, 256x256: 80 vs 94 ms; torch 114 ms).
# It exports slower (~20 s vs ~5 s for the tiny model, once per cache entry). Other providers (and TensorRT) get
# the TorchScript graph at opset 17, which all of them parse; it is also the fallback if a dynamo export fails.
CPU_EXPORT = OnnxExportOptions(exporter="dynamo", opset=23)
PORTABLE_EXPORT = OnnxExportOptions(exporter="torchscript", opset=17)

log = logging.getLogger("vcam.engines")


@dataclass(frozen=True)
class OnnxRuntimeOptions:
    """How the sessions run. `providers=None` picks the best available; `threads=None` uses torch's count."""

    providers: tuple[str, ...] | None = None
    threads: int | None = None
    # Spinning worker threads burn the 2 shared cores between calls and starve the next session's threads and
    # the camera / sink threads; measured slower here for the UNet + encoder + decoder sequence.
    allow_spinning: bool = False
    cache_root: Path | None = None
    export: OnnxExportOptions | None = None  # None: CPU_EXPORT on the CPU provider, else PORTABLE_EXPORT
    # A warm-started entry is hashed in full and repaired if corrupt (engines.cache_check): on a background thread
    # while frames flow (True), or before this engine is returned (False: a slower start, never a corrupt call).
    check_in_background: bool = True


@dataclass(frozen=True)
class OnnxGraphSet:
    """The checked ONNX graphs of one model at one set of static shapes, plus what is needed to run them."""

    directory: Path
    shapes: EngineShapes
    dims: ModelDims
    specs: tuple[GraphSpec, ...]
    noise_schedule: NoiseScheduleConfig
    cache_key: EngineCacheKey
    cache_entry: CacheEntry
    export: OnnxExportOptions  # how these graphs were exported
    tokenizer: Any  # transformers CLIPTokenizer, saved with the graphs

    def path(self, graph: str) -> Path:
        return self.directory / f"{graph}.onnx"

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """(N,) texts -> (N, 77) token ids, padded / truncated exactly as the torch engine does."""
        return self.tokenizer(
            list(texts), padding="max_length", max_length=self.dims.text_tokens, truncation=True, return_tensors="pt"
        ).input_ids

    def token_groups(self, texts: Sequence[str]) -> list[torch.Tensor]:
        """Token ids in groups of the static text batch: (text_batch, 77) each."""
        if not texts:
            raise ValueError("encode_prompt needs at least one text")
        ids = self.tokenize(texts)  # (N, 77)
        batch = self.shapes.text_batch
        if len(ids) % batch:
            raise ValueError(f"encode_prompt got {len(ids)} texts; this engine encodes them in groups of {batch}")
        return [ids[i:i + batch] for i in range(0, len(ids), batch)]


def hashed_before_use(name: str) -> bool:
    """The files of an entry a warm start hashes before the first call (the rest is checked in the background).

    The text encoder and tokenizer: their output outlives the call (core caches prompt embeddings), so swapping
    in a rebuilt graph later would not undo a corrupt one; and they are small (SD 1.5: ~0.5 GB of 4 GB).
    """
    return name == "text_encoder.onnx" or name.startswith(f"{TOKENIZER_DIR}/")


def onnx_backend_version(exporter: str) -> str:
    """The installed torch / onnx / ONNX Runtime versions and the exporter, as the cache key records them: a graph
    made with any other combination is not reused (and `vcam models prune` removes it)."""
    import onnx
    import onnxruntime

    return f"torch{torch.__version__}+onnx{onnx.__version__}+ort{onnxruntime.__version__}+{exporter}"


def onnx_cache_key(spec: ModelSpec, shapes: EngineShapes, options: OnnxExportOptions) -> EngineCacheKey:
    """The key of the graphs: model content, LoRAs + scale, shapes, fp32, opset, exporter, torch / onnx / ORT."""
    resolved = resolve_model(spec)
    loras = tuple(LoraFingerprint(file_sha256(path), resolved.lora_scale) for path in resolved.lora_paths)
    return EngineCacheKey(
        model_hash=resolved.content_hash, width=shapes.width, height=shapes.height,
        frame_batch=shapes.frame_batch, unet_batch=shapes.unet_batch, text_batch=shapes.text_batch,
        precision="fp32", backend="onnx",
        backend_version=onnx_backend_version(options.exporter),
        opset=options.opset, exporter_version=EXPORTER_VERSION, loras=loras,
    )


def _export_from_torch(spec: ModelSpec, shapes: EngineShapes, options: OnnxExportOptions, threads: int):
    """The cache builder: load the torch engine on the CPU in fp32, export + check every graph, save the tokenizer."""
    from engines.devices import flush_denormals_on_this_thread
    from engines.kv_cache import CrossAttentionKV
    from engines.loading import load_components
    from engines.torch_engine import TorchEngine

    def build(directory: Path) -> dict:
        # Not `configure_cpu(threads)`: torch's thread count is process-wide, and this runs inside an embedding
        # application or, for a cache repair, beside a live stream (engines.cache_check). The export runs on the
        # pool the process has; only the process's owner sizes it (vcam.runtime). Flush-to-zero is per thread.
        flush_denormals_on_this_thread()
        log_build_step(0, 1 + GRAPH_COUNT, f"loading {spec.model} in torch to export it")
        components = load_components(spec, "cpu", torch.float32)
        engine = TorchEngine(components, shapes)
        text_encoder = components.text_encoder
        kv = CrossAttentionKV.install(components.unet)  # plain calls (other embeddings) are as before
        dims = ModelDims(
            latent_channels=engine.latent_channels, vae_scale_factor=engine.vae_scale_factor,
            embed_dim=int(text_encoder.config.hidden_size), text_tokens=TEXT_TOKENS,
            cross_attention=kv.head_shapes if kv.complete else (),
        )
        calls = {
            "text_encoder": CallAsModule(lambda ids: text_encoder(ids).last_hidden_state, [text_encoder]),
            "image_encoder": CallAsModule(engine.encode_images, [components.vae]),
            "image_decoder": CallAsModule(engine.decode_latents, [components.vae]),
            **unet_calls(engine.predict_noise, kv, shapes, dims, [components.unet]),
        }
        report = export_checked_graphs(calls, graph_specs(shapes, dims), directory, options, threads,
                                       token_limit=len(components.tokenizer), steps_before=1)
        components.tokenizer.save_pretrained(directory / TOKENIZER_DIR)
        report["dims"] = dataclasses.asdict(dims)
        report["noise_schedule"] = dataclasses.asdict(engine.noise_schedule)
        return report

    return build


def build_graph_set(
    spec: ModelSpec, shapes: EngineShapes, cache: EngineCache, options: OnnxExportOptions, threads: int,
    force_rebuild: str = "",
) -> OnnxGraphSet:
    """The checked graphs for `spec` at `shapes`, from the cache or freshly exported into it."""
    with hf_imports():
        from transformers import CLIPTokenizer

    key = onnx_cache_key(spec, shapes, options)
    build = _export_from_torch(spec, shapes, options, threads)
    entry = (cache.rebuild(key, build, force_rebuild) if force_rebuild
             else cache.get_or_build(key, build, rehash=hashed_before_use))
    report = entry.build_report
    dims = ModelDims(**report["dims"])
    return OnnxGraphSet(
        directory=entry.path, shapes=shapes, dims=dims, specs=graph_specs(shapes, dims),
        noise_schedule=NoiseScheduleConfig(**report["noise_schedule"]), cache_key=key, cache_entry=entry,
        export=options,
        tokenizer=CLIPTokenizer.from_pretrained(entry.path / TOKENIZER_DIR, local_files_only=True),
    )


def choose_providers(requested: Sequence[str] | None, available: Sequence[str], device: str = "auto") -> list[str]:
    """The provider list for the sessions: the requested ones (all must exist), else the best available.

    `device="cpu"` keeps to the CPU provider; `device="cuda"` needs a CUDA-capable provider.
    """
    if requested:
        missing = [name for name in requested if name not in available]
        if missing:
            raise EngineUnavailableError(
                f"ONNX Runtime provider(s) {', '.join(missing)} not available here (have: {', '.join(available)}); "
                "install the matching onnxruntime package (e.g. onnxruntime-gpu) or drop the providers option")
        chosen = list(requested)
    elif device.startswith("cpu"):
        chosen = ["CPUExecutionProvider"]
    else:
        chosen = [name for name in PROVIDER_PREFERENCE if name in available]
        if device.startswith("cuda") and not any(name in CUDA_PROVIDERS for name in chosen):
            raise EngineUnavailableError(
                "device cuda requested but this onnxruntime has no CUDA provider; pip install onnxruntime-gpu "
                "or use --device cpu")
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


def session_options(threads: int, allow_spinning: bool) -> Any:
    """Settings for small CPU budgets: intra-op threads = `threads`, one inter-op thread, all graph rewrites.

    Measured and not adopted: ORT's transformer optimizer (onnxruntime.transformers, model_type "unet") fuses
    only layer norms in the tiny UNet and was no faster than level ALL; spinning threads were slower.

    Memory-pattern planning is on: with static shapes ORT plans every intermediate buffer once.
    """
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.enable_mem_pattern = True
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
    # Same flush-to-zero as torch on the CPU (engines.devices): denormals from small weights are ~20x slower.
    options.add_session_config_entry("session.set_denormal_as_zero", "1")
    return options


class OnnxSessions(GraphRunner):
    """The four `Engine` calls on ONNX Runtime sessions over one `OnnxGraphSet`; inputs must have its static shapes."""

    engine_name = "onnxruntime"

    def __init__(self, graphs: OnnxGraphSet, providers: Sequence[str], threads: int, allow_spinning: bool = False,
                 unet_path: str | None = None):
        import onnxruntime

        super().__init__(graphs, unet_path)
        # With a CUDA provider, tensors live on the GPU and are bound in place; otherwise numpy views of CPU tensors.
        self.device = torch.device("cuda" if providers[0] in CUDA_PROVIDERS else "cpu")
        options = session_options(threads, allow_spinning)
        self.sessions = {
            name: onnxruntime.InferenceSession(self.graph_path(name), options, providers=list(providers))
            for name in self.specs
        }

    def _run_graph(self, spec: GraphSpec, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        if self.device.type == "cuda":
            return self._run_bound(spec, inputs)
        feeds = {
            tensor.name: np.ascontiguousarray(value.detach().to("cpu", tensor.dtype).numpy())
            for tensor, value in zip(spec.inputs, inputs)
        }
        outputs = self.sessions[spec.name].run([tensor.name for tensor in spec.outputs], feeds)
        return tuple(torch.from_numpy(output) for output in outputs)

    def _run_bound(self, spec: GraphSpec, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """GPU path: bind torch CUDA tensors in place (no host round trip) and preallocated outputs."""
        binding = self.sessions[spec.name].io_binding()
        kept = []  # keep converted inputs alive until the run ends
        for tensor, value in zip(spec.inputs, inputs):
            value = value.detach().to(self.device, tensor.dtype).contiguous()
            kept.append(value)
            binding.bind_input(tensor.name, "cuda", value.device.index or 0, _numpy_dtype(tensor.dtype),
                               tensor.shape, value.data_ptr())
        outputs = tuple(torch.empty(tensor.shape, dtype=tensor.dtype, device=self.device) for tensor in spec.outputs)
        for tensor, output in zip(spec.outputs, outputs):
            binding.bind_output(tensor.name, "cuda", output.device.index or 0, _numpy_dtype(tensor.dtype),
                                tensor.shape, output.data_ptr())
        torch.cuda.current_stream().synchronize()
        self.sessions[spec.name].run_with_iobinding(binding)
        return outputs


class OnnxRuntimeEngine(GraphEngine):
    """`Engine` on ONNX Runtime (see `engines.graph_engine.GraphEngine` for how its runner is swapped)."""

    name = "onnxruntime"

    def __init__(self, graphs: OnnxGraphSet, providers: Sequence[str], threads: int, allow_spinning: bool = False):
        self.providers = list(providers)
        self.allow_spinning = allow_spinning
        super().__init__(graphs, threads)

    def make_runner(self, graphs: OnnxGraphSet, unet_path: str | None = None) -> OnnxSessions:
        return OnnxSessions(graphs, self.providers, self.threads, self.allow_spinning, unet_path)


def _numpy_dtype(dtype: torch.dtype) -> type:
    return {torch.float32: np.float32, torch.float16: np.float16, torch.int64: np.int64}[dtype]


def default_threads(threads: int | None) -> int:
    return threads if threads is not None else max(1, min(torch.get_num_threads(), os.cpu_count() or 1))


def export_plan(requested: OnnxExportOptions | None, providers: Sequence[str]) -> list[OnnxExportOptions]:
    """Export options to use, best first: the requested ones, else the fastest for the provider; then portable."""
    preferred = requested or (CPU_EXPORT if providers[0] == "CPUExecutionProvider" else PORTABLE_EXPORT)
    return [preferred] if preferred == PORTABLE_EXPORT else [preferred, PORTABLE_EXPORT]


def cached_or_exported_graphs(
    spec: ModelSpec, shapes: EngineShapes, cache: EngineCache, plan: Sequence[OnnxExportOptions], threads: int
) -> OnnxGraphSet:
    """Any intact cached entry in plan order (so a model whose dynamo export failed once does not retry it on
    every start), else export with each option in turn; the last one's error if all fail."""
    for export in plan:
        if not cache.verify(onnx_cache_key(spec, shapes, export), rehash=hashed_before_use):
            return build_graph_set(spec, shapes, cache, export, threads)
    for attempt, export in enumerate(plan):
        try:
            return build_graph_set(spec, shapes, cache, export, threads)
        except EngineBuildError as error:
            if attempt == len(plan) - 1:
                raise
            log.warning(f"{error}; retrying with the {plan[attempt + 1].exporter} exporter")
    raise AssertionError("unreachable: the plan is never empty")


def onnxruntime_load_errors() -> tuple[type[BaseException], ...]:
    """What creating an ONNX Runtime session raises for a graph it refuses: its own error classes (they derive
    from Exception alone, not RuntimeError), and OSError for a file it cannot read."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    names = ("Fail", "InvalidArgument", "NoSuchFile", "NoModel", "InvalidProtobuf", "InvalidGraph",
             "RuntimeException", "NotImplemented", "EPFail", "EngineError")
    return (OSError, RuntimeError, *(getattr(state, name) for name in names if hasattr(state, name)))


def open_graph_engine(
    make_engine: Callable[[OnnxGraphSet], GraphEngine], spec: ModelSpec, shapes: EngineShapes, cache: EngineCache,
    plan: Sequence[OnnxExportOptions], threads: int, check_in_background: bool = True, runtime: str = "ONNX Runtime",
    load_errors: tuple[type[BaseException], ...] = (OSError, RuntimeError),
) -> GraphEngine:
    """Graphs from the cache (exported on a miss), then `make_engine(graphs)`; an entry that does not load is
    rebuilt once; a warm-started entry gets its full checksum (engines.cache_check). Shared by every runtime that
    runs the cached graphs (ONNX Runtime, OpenVINO): `runtime` names it in what is said, `load_errors` are what
    it raises for a graph it refuses (OpenVINO: RuntimeError; ONNX Runtime: `onnxruntime_load_errors`), so a
    programming error in `make_engine` is not taken for a damaged cache entry."""
    graphs = cached_or_exported_graphs(spec, shapes, cache, plan, threads)
    try:
        engine = make_engine(graphs)
    except load_errors as error:  # checksums matched but the runtime refused the graph: rebuild rather than use it
        if graphs.cache_entry.built:
            raise EngineBuildError(
                f"{runtime} cannot load the freshly exported graphs ({first_line(error)}); use --engine torch"
            ) from error
        reason = f"cached graphs failed to load ({type(error).__name__})"
        log.warning("engine cache: %s cannot load the cached %s (%s); rebuilding it", runtime,
                    cache.describe(graphs.cache_key), first_line(error))
        graphs = build_graph_set(spec, shapes, cache, graphs.export, threads, force_rebuild=reason)
        engine = make_engine(graphs)
    if not engine.checked.is_set():
        from engines.cache_check import check_and_repair, start_cache_check

        if check_in_background:
            start_cache_check(engine, spec, shapes, cache)
        else:
            check_and_repair(engine, spec, shapes, cache)
    return engine


def create_onnxruntime_engine(
    spec: ModelSpec, shapes: EngineShapes, device: str = "auto", threads: int | None = None,
    options: OnnxRuntimeOptions = OnnxRuntimeOptions(),
) -> OnnxRuntimeEngine:
    """The ONNX Runtime engine over the cached graphs (exported on a miss); see `open_graph_engine`."""
    import onnxruntime

    threads = default_threads(threads if threads is not None else options.threads)
    providers = choose_providers(options.providers, onnxruntime.get_available_providers(), device)
    engine = open_graph_engine(
        lambda graphs: OnnxRuntimeEngine(graphs, providers, threads, options.allow_spinning), spec, shapes,
        EngineCache(options.cache_root), export_plan(options.export, providers), threads, options.check_in_background,
        load_errors=onnxruntime_load_errors())
    assert isinstance(engine, OnnxRuntimeEngine)
    return engine


def build_onnxruntime_engine(spec: ModelSpec, shapes: EngineShapes, device: str, threads: int | None):
    """Factory entry (`--engine onnxruntime`)."""
    return create_onnxruntime_engine(spec, shapes, device, threads)
