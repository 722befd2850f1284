"""The OpenVINO engine beyond the shared conformance suite: which OpenVINO device a `--device` means, its warm
start from the ONNX graph cache, and auto's one-time measurement of ONNX Runtime against OpenVINO.

The numbers (same as torch eager within 1e-3) are checked by tests/test_engine_conformance.py like every engine's.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from engines.base import EngineShapes, EngineUnavailableError
from engines.loading import ModelSpec

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
    kernels = {path.name: path.stat().st_mtime_ns for path in (tmp_path / KERNEL_CACHE_DIR).iterdir()}
    warm = create_openvino_engine(spec, SMALL, "cpu", 2, options)
    assert cold.graphs.cache_entry.built and not warm.graphs.cache_entry.built
    assert warm.graphs.directory == cold.graphs.directory and warm.graphs.directory.name.startswith("onnx-")
    assert kernels and {p.name: p.stat().st_mtime_ns for p in (tmp_path / KERNEL_CACHE_DIR).iterdir()} == kernels


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
