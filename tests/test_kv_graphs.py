"""The engines over ONNX graphs project cross-attention keys and values once per prompt: a `cross_kv` graph maps the
embeddings to every layer's keys / values, and the UNet graph takes those instead of the embeddings.

The tiny model at 64x64, F=1, UNet batch 2, as in tests/test_engine_conformance.py (which checks every call of
these engines against torch eager as well).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
import torch

from engines.base import EngineShapes
from engines.loading import ModelSpec
from engines.onnx_export import EXPORTER_VERSION, ModelDims, graph_specs

SHAPES = EngineShapes(width=64, height=64, frame_batch=1, unet_batch=2)
FP32_TOLERANCE = 1e-3
RUNTIMES = ("onnxruntime", "openvino")


@pytest.fixture(scope="module")
def spec(tiny_model_dir) -> ModelSpec:
    return ModelSpec(model=str(tiny_model_dir.model_dir), vae=str(tiny_model_dir.taesd_dir))


@pytest.fixture(scope="module")
def plain_torch(spec: ModelSpec):
    """The torch engine computing every key and value in every call: what the graphs must equal."""
    from engines.loading import load_components
    from engines.torch_engine import TorchEngine

    return TorchEngine(load_components(spec, "cpu", torch.float32), SHAPES, cross_attention_kv=False)


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("engine-cache")  # one export, shared by both runtimes


@pytest.fixture(scope="module", params=RUNTIMES)
def graph_engine(request: pytest.FixtureRequest, spec: ModelSpec, cache_root: Path) -> Iterator:
    if request.param == "onnxruntime":
        from engines.onnx_engine import OnnxRuntimeOptions, create_onnxruntime_engine

        yield create_onnxruntime_engine(spec, SHAPES, "cpu", 2, OnnxRuntimeOptions(cache_root=cache_root))
    else:
        from engines.openvino_engine import OpenVinoOptions, create_openvino_engine

        yield create_openvino_engine(spec, SHAPES, "cpu", 2, OpenVinoOptions(cache_root=cache_root))


def latents_and_timesteps(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(seed)), torch.tensor([259, 39])


class GraphRuns:
    """Counts the graphs a runner runs, by name (wraps its `_run_graph`)."""

    def __init__(self, runner, monkeypatch: pytest.MonkeyPatch) -> None:
        self.counts: dict[str, int] = {}
        run_graph = runner._run_graph

        def counted(spec, inputs):
            self.counts[spec.name] = self.counts.get(spec.name, 0) + 1
            return run_graph(spec, inputs)

        monkeypatch.setattr(runner, "_run_graph", counted)


@pytest.mark.timeout(900)
def test_the_unet_graph_takes_every_cross_attention_layers_keys_and_values_instead_of_the_embeddings(
    graph_engine, plain_torch
) -> None:
    specs = {graph.name: graph for graph in graph_engine.graphs.specs}
    layers = sum(bool(getattr(module, "is_cross_attention", False)) for module in plain_torch._unet.modules())
    keys_values = [tensor.name for tensor in specs["cross_kv"].outputs]
    assert layers > 0 and len(keys_values) == 2 * layers
    assert [tensor.name for tensor in specs["cross_kv"].inputs] == ["embeddings"]
    assert [tensor.name for tensor in specs["unet"].inputs] == ["latents", "timesteps", *keys_values]
    assert set(graph_engine.build_report["graphs"]) >= {"cross_kv", "unet"}  # both checked against torch
    assert graph_engine.graphs.cache_key.exporter_version == EXPORTER_VERSION != "1"  # not the embeddings layout's


def test_a_unet_with_a_cross_attention_layer_the_processors_cannot_serve_keeps_the_graph_over_the_embeddings(
    plain_torch
) -> None:
    import copy

    from engines.kv_cache import CrossAttentionKV

    unet = copy.deepcopy(plain_torch._unet)
    assert CrossAttentionKV.install(copy.deepcopy(unet)).complete
    layer = next(module for module in unet.modules() if getattr(module, "is_cross_attention", False))
    layer.norm_cross = torch.nn.LayerNorm(128)  # a norm of the embeddings: the processor leaves this layer alone
    kv = CrossAttentionKV.install(unet)
    assert not kv.complete and kv.layers
    dims = ModelDims(latent_channels=4, vae_scale_factor=8, embed_dim=128)  # what the export then records
    specs = {graph.name: graph for graph in graph_specs(SHAPES, dims)}
    assert "cross_kv" not in specs and [t.name for t in specs["unet"].inputs] == ["latents", "timesteps", "embeddings"]


@pytest.mark.timeout(900)
def test_graph_engine_predict_noise_equals_the_torch_engines_across_prompt_switches(graph_engine, plain_torch) -> None:
    prompts = ("a watercolor painting", "cyberpunk city at night, neon lights", "a watercolor painting")
    for seed, prompt in enumerate(prompts):
        embeddings = plain_torch.encode_prompt([prompt]).expand(2, -1, -1)  # (T, 77, D): one prompt, both steps
        latents, timesteps = latents_and_timesteps(seed)
        ours = graph_engine.predict_noise(latents, timesteps, embeddings)
        theirs = plain_torch.predict_noise(latents, timesteps, embeddings)
        assert float((ours - theirs).abs().max()) < FP32_TOLERANCE and float(theirs.abs().max()) > 1e-2
    both = plain_torch.encode_prompt(["a watercolor painting", "a pencil sketch"])  # a different prompt per row
    latents, timesteps = latents_and_timesteps(9)
    ours, theirs = graph_engine.predict_noise(latents, timesteps, both), plain_torch.predict_noise(latents, timesteps, both)
    assert float((ours - theirs).abs().max()) < FP32_TOLERANCE


@pytest.mark.timeout(900)
def test_keys_and_values_are_projected_at_a_prompt_switch_not_in_every_unet_call(
    graph_engine, plain_torch, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = plain_torch.encode_prompt(["a watercolor painting"]).expand(2, -1, -1)
    second = plain_torch.encode_prompt(["an oil painting of a harbour"]).expand(2, -1, -1)
    graph_engine.predict_noise(*latents_and_timesteps(0), first)
    runs = GraphRuns(graph_engine.runner, monkeypatch)
    for seed in range(3):
        graph_engine.predict_noise(*latents_and_timesteps(seed), first.clone())  # same prompt, even as a new tensor
    assert runs.counts == {"unet": 3}
    graph_engine.predict_noise(*latents_and_timesteps(3), second)
    graph_engine.predict_noise(*latents_and_timesteps(4), second)
    assert runs.counts == {"unet": 5, "cross_kv": 1}
    again = graph_engine.predict_noise(*latents_and_timesteps(5), first)  # switching back projects the first again
    assert runs.counts == {"unet": 6, "cross_kv": 2}
    assert torch.equal(again, graph_engine.predict_noise(*latents_and_timesteps(5), first))


@pytest.mark.timeout(900)
def test_int8_calibration_records_the_keys_and_values_the_unet_graph_takes(graph_engine, plain_torch) -> None:
    from engines.quantize import CalibrationRecorder

    recorded = []
    recorder = CalibrationRecorder(graph_engine.runner, 2, recorded.extend)
    embeddings = plain_torch.encode_prompt(["a watercolor painting"]).expand(2, -1, -1)
    for seed in range(2):
        recorder.predict_noise(*latents_and_timesteps(seed), embeddings)
    names = [tensor.name for tensor in graph_engine.runner.specs["unet"].inputs]
    assert len(recorded) == 2 and all(list(call) == names for call in recorded)
    projected = graph_engine.runner.unet_inputs(*latents_and_timesteps(0), embeddings)
    assert all(torch.equal(recorded[0][name], value) for name, value in zip(names, projected))
