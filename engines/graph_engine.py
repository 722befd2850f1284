"""What every engine over the cached ONNX graphs shares: the runner contract and the swappable-runner `Engine`.

ONNX Runtime and OpenVINO run the same checked graphs of one cache entry (`engines.onnx_engine.OnnxGraphSet`);
they differ only in how one graph is run on one set of inputs. So a runtime is a `GraphRunner` subclass with one
method, `_run_graph`, and the engine around it (shape checks, text batching, the cross-attention keys / values
projected once per prompt, swapping the runner while the stream runs) is written once here. TensorRT's engine is a
`GraphRunner` over its plans of the same graphs.
"""
from __future__ import annotations

import threading
from typing import Any, Sequence

import torch

from engines.kv_cache import OncePerPrompt
from engines.onnx_export import GraphSpec


def check_input_shapes(spec: GraphSpec, inputs: Sequence[torch.Tensor], engine_name: str) -> None:
    """Static-shape graphs take exactly their built shapes; anything else is a ValueError naming the setting."""
    for tensor, value in zip(spec.inputs, inputs):
        if tuple(value.shape) != tensor.shape:
            raise ValueError(
                f"{spec.name} input {tensor.name} has shape {tuple(value.shape)} but the {engine_name} engine was built "
                f"for {tensor.shape}; build it with matching width / height / frame buffer / RCFG settings")


class GraphRunner:
    """The four `Engine` calls over one graph set; a subclass says how a graph runs (`_run_graph`).

    `graphs` is an `engines.onnx_engine.OnnxGraphSet`; `unet_path`, when given, replaces the set's UNet graph (the
    INT8 UNet of `engines.quantize`, whose inputs and outputs are those of the fp32 one).

    With a `cross_kv` graph in the set, the UNet graph takes every cross-attention layer's keys and values instead
    of the embeddings: `cross_kv` runs when the embeddings' content changes (a prompt switch) and its outputs feed
    every UNet call until then (`engines.kv_cache.OncePerPrompt`). That memo is the runner's only state, a function
    of the embeddings alone: a swapped-in runner starts without it and projects at its first call.
    """

    engine_name = "graph"

    def __init__(self, graphs: Any, unet_path: str | None = None) -> None:
        self.graphs = graphs
        self.unet_path = unet_path
        self.specs = {spec.name: spec for spec in graphs.specs}
        self.device = torch.device("cpu")
        self.keys_values = OncePerPrompt(lambda embeddings: self._run_outputs("cross_kv", embeddings))

    def graph_path(self, graph: str) -> str:
        if graph == "unet" and self.unet_path:
            return self.unet_path
        return str(self.graphs.path(graph))

    def _run_outputs(self, graph: str, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        spec = self.specs[graph]
        check_input_shapes(spec, inputs, self.engine_name)
        return self._run_graph(spec, inputs)

    def _run(self, graph: str, *inputs: torch.Tensor) -> torch.Tensor:
        return self._run_outputs(graph, *inputs)[0]

    def _run_graph(self, spec: GraphSpec, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """Every output of the graph `spec` on `inputs` (its static shapes), in the spec's order."""
        raise NotImplementedError

    def encode_prompt(self, texts: Sequence[str]) -> torch.Tensor:
        return torch.cat([self._run("text_encoder", ids) for ids in self.graphs.token_groups(texts)])

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return self._run("image_encoder", images)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        return self._run("image_decoder", latents)

    def unet_inputs(self, latents: torch.Tensor, timesteps: torch.Tensor, embeddings: torch.Tensor
                    ) -> tuple[torch.Tensor, ...]:
        """The UNet graph's inputs for a `predict_noise` call, in its spec's order: latents, timesteps and the keys /
        values of `embeddings` (projected only at a prompt switch; shared by the calls of a prompt, never written to),
        or the embeddings themselves for a graph set without `cross_kv`."""
        if "cross_kv" not in self.specs:
            return latents, timesteps, embeddings
        check_input_shapes(self.specs["unet"], (latents, timesteps), self.engine_name)  # before a projection
        return latents, timesteps, *self.keys_values(embeddings)

    def predict_noise(self, latents: torch.Tensor, timesteps: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        return self._run("unet", *self.unet_inputs(latents, timesteps, embeddings))


class ForwardsToRunner:
    """The four `Engine` calls handed to `self.runner` (an engine whose runner can be swapped, or a runner wrapper)."""

    runner: Any

    def encode_prompt(self, texts: Sequence[str]) -> torch.Tensor:
        return self.runner.encode_prompt(texts)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return self.runner.encode_images(images)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        return self.runner.decode_latents(latents)

    def predict_noise(self, latents: torch.Tensor, timesteps: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        return self.runner.predict_noise(latents, timesteps, embeddings)


class GraphEngine(ForwardsToRunner):
    """`Engine` over cached graphs: each call goes to the current runner, normally a `GraphRunner` of its graphs.

    The runner can be replaced while the stream runs (`engines.cache_check` does so when a warm-started entry
    fails its full checksum, `engines.quantize` when the INT8 UNet is ready): the inference thread reads
    `self.runner` once per call and the replacement is one attribute assignment, so every call runs wholly on the
    old or the new runner. Runners compute the same function (within the precision asked for) and hold no state
    but a memo of it (the last prompt's keys / values), so a frame whose calls straddle the swap is as good as its
    runners.
    """

    name = "graph"
    selection_note = ""  # why this runtime was picked over another (engines.runtime_race), for auto's one line
    int8_ready: threading.Event | None = None  # with --precision int8: set once the INT8 UNet runs (engines.quantize)

    def __init__(self, graphs: Any, threads: int) -> None:
        self.threads = threads
        self.runner: Any = self.make_runner(graphs)
        self.graphs = graphs
        self.dims = graphs.dims
        self.noise_schedule = graphs.noise_schedule
        self.latent_channels = graphs.dims.latent_channels
        self.vae_scale_factor = graphs.dims.vae_scale_factor
        self.dtype = torch.float32
        self.device = self.runner.device
        self.build_report = graphs.cache_entry.build_report
        self.checked = threading.Event()  # set once the graphs in use are known to match their checksums
        if graphs.cache_entry.built:
            self.checked.set()  # hashed while the entry was written

    def make_runner(self, graphs: Any, unet_path: str | None = None) -> GraphRunner:
        """A runner of this engine's runtime over `graphs` (with `unet_path` instead of their UNet if given)."""
        raise NotImplementedError

    def use_runner(self, runner: Any) -> None:
        """Send the following calls to `runner` (same device, dtype and static shapes); see the class docstring."""
        if isinstance(runner, GraphRunner):
            self.graphs = runner.graphs
            self.build_report = runner.graphs.cache_entry.build_report
        self.runner = runner

