"""The OpenVINO engine beyond the shared conformance suite: which OpenVINO device a `--device` means, its warm
start from the ONNX graph cache, and auto's one-time measurement of ONNX Runtime against OpenVINO.

The numbers (same as torch eager within 1e-3) are checked by tests/test_engine_conformance.py like every engine's.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from engines.base import EngineShapes, EngineUnavailableError
from engines.loading import ModelSpec

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SMALL = EngineShapes(width=64, height=64, frame_batch=1, unet_batch=2)


@pytest.fixture(scope="module")
def spec(tiny_model_dir) -> ModelSpec:
    return ModelSpec(model=str(tiny_model_dir.model_dir), vae=str(tiny_model_dir.taesd_dir))


def test_device_auto_prefers_an_integrated_gpu_then_an_npu_then_the_cpu() -> None:
    from engines.openvino_engine import choose_openvino_device

    assert choose_openvino_device("auto", ["CPU"]) == "CPU"
    assert choose_openvino_device("auto", ["CPU", "NPU"]) == "NPU"
    assert choose_openvino_device("auto", ["CPU", "NPU", "GPU.0", "GPU.1"]) == "GPU.0"
    assert choose_openvino_device("cpu", ["CPU", "GPU"]) == "CPU"
    assert choose_openvino_device("gpu", ["CPU", "GPU.0", "GPU.1"]) == "GPU"
    assert choose_openvino_device("gpu.1", ["CPU", "GPU.0", "GPU.1"]) == "GPU.1"


def test_a_device_openvino_does_not_have_is_one_line_naming_what_it_has() -> None:
    from engines.openvino_engine import choose_openvino_device

    for requested in ("npu", "cuda"):
        with pytest.raises(EngineUnavailableError) as raised:
            choose_openvino_device(requested, ["CPU"])
        message = str(raised.value)
        assert "\n" not in message and "it sees: CPU" in message and "--device auto or cpu" in message


@pytest.mark.timeout(900)
def test_warm_openvino_start_reuses_the_onnx_graphs_and_the_compiled_kernels(spec: ModelSpec, tmp_path: Path) -> None:
    from engines.openvino_engine import KERNEL_CACHE_DIR, OpenVinoOptions, create_openvino_engine

    options = OpenVinoOptions(cache_root=tmp_path, check_in_background=False)
    cold = create_openvino_engine(spec, SMALL, "cpu", 2, options)
    kernel_dir = cold.graphs.directory / KERNEL_CACHE_DIR  # inside the graphs' entry: pruned with it
    kernels = {path.name: path.stat().st_mtime_ns for path in kernel_dir.iterdir()}
    warm = create_openvino_engine(spec, SMALL, "cpu", 2, options)
    assert cold.graphs.cache_entry.built and not warm.graphs.cache_entry.built
    assert warm.graphs.directory == cold.graphs.directory and warm.graphs.directory.name.startswith("onnx-")
    assert kernels and {p.name: p.stat().st_mtime_ns for p in kernel_dir.iterdir()} == kernels


@pytest.mark.timeout(900)
def test_auto_measures_onnxruntime_against_openvino_once_and_reads_the_answer_from_the_cache(
    spec: ModelSpec, tmp_path: Path
) -> None:
    from engines.runtime_race import fastest_cpu_runtime

    first = fastest_cpu_runtime(spec, SMALL, "cpu", 2, cache_root=tmp_path)
    second = fastest_cpu_runtime(spec, SMALL, "cpu", 2, cache_root=tmp_path)
    assert first.measured and not second.measured
    assert set(first.seconds) == {"onnxruntime", "openvino"} and all(s > 0 for s in first.seconds.values())
    assert second.seconds == first.seconds and second.engine.name == first.engine.name
    assert first.engine.name == min(first.seconds, key=first.seconds.__getitem__)  # the faster one
    assert "(cached measurement)" in second.summary and "(measured at build time)" in first.summary


SIGNAL_AFTER_TWO_ENGINES = """
import gc, os, signal, sys, threading, time
import numpy as np
import openvino
from engines.openvino_engine import compile_options, openvino_core
from vcam.stop_signals import StopSignals

def compiled_relu():
    parameter = openvino.opset13.parameter([1, 4], np.float32)
    model = openvino.Model([openvino.opset13.relu(parameter)], [parameter])
    return openvino_core().compile_model(model, "CPU", compile_options("CPU", 1))

first, second = compiled_relu(), compiled_relu()  # two engines, released in the order they were made
del first; gc.collect()
del second; gc.collect()
received = []
StopSignals(received.append, threading.Event()).install()
os.kill(os.getpid(), signal.SIGTERM)
deadline = time.monotonic() + 30
while not received and time.monotonic() < deadline:
    time.sleep(0.01)
print("stopped by", received)
"""


def test_a_stop_signal_after_openvino_engines_came_and_went_reaches_its_handler() -> None:
    # OpenVINO's CPU plugin swaps the thread's alternate signal stack per Core: with a Core per engine, releasing two
    # in creation order left a freed stack behind and the stop signal was a segmentation fault (exit -11).
    finished = subprocess.run([sys.executable, "-c", SIGNAL_AFTER_TWO_ENGINES], cwd=PROJECT_ROOT,
                              capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert "stopped by ['SIGTERM']" in finished.stdout


@pytest.mark.timeout(900)
def test_a_unet_with_film_resnets_runs_from_the_opset_17_graph_and_gives_torch_numbers(
        spec: ModelSpec, tmp_path: Path) -> None:
    # OpenVINO 2026.4 crashes the process compiling the opset-23 graph of a scale-shift UNet in f32 (the trained
    # tiny model is one): such a model takes the opset-17 graph; a plain SD UNet keeps the opset-23 one.
    import torch

    from engines.loading import load_components
    from engines.onnx_engine import CPU_EXPORT, PORTABLE_EXPORT
    from engines.openvino_engine import OpenVinoOptions, create_openvino_engine, film_unet
    from engines.tiny import TRAINED_TINY_MODEL
    from engines.torch_engine import TorchEngine

    tiny = ModelSpec(model=str(TRAINED_TINY_MODEL))
    assert film_unet(tiny) and not film_unet(spec)
    engine = create_openvino_engine(tiny, SMALL, "cpu", 2, OpenVinoOptions(cache_root=tmp_path,
                                                                         check_in_background=False))
    assert engine.graphs.export == PORTABLE_EXPORT != CPU_EXPORT
    reference = TorchEngine(load_components(tiny, "cpu", torch.float32), SMALL)
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 16, 16, generator=generator)
    embeddings = reference.encode_prompt(["inverted colours", "neon glow"])
    timesteps = torch.tensor([39, 19])
    ours, theirs = engine.predict_noise(latents, timesteps, embeddings), reference.predict_noise(
        latents, timesteps, embeddings)
    assert float((ours - theirs).abs().max()) <= 1e-3 * float(theirs.abs().max())
