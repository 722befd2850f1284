"""`--precision bf16` / `auto`: OpenVINO runs the UNet in bf16 where the CPU computes bf16 natively (AMX-BF16 or
AVX512-BF16), fp32 everywhere else, and says once when an explicit bf16 has no effect.

On a CPU with native bf16 (this workplace's has AMX) the specs see the bf16 UNet itself: its output differs from
fp32's by bf16's rounding and no more, and the trained tiny model's pictures stay within 30 dB of fp32's. On a
CPU without it they see the fallback: the one line, and fp32's numbers exactly.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.tiny_figures import PRESET_SLOTS
from engines.base import EngineShapes, EngineUnavailableError
from engines.loading import ModelSpec
from engines.onnx_export import example_inputs, predict_noise_spec

pytestmark = pytest.mark.timeout(900)

SMALL = EngineShapes(width=64, height=64, frame_batch=1, unet_batch=2)
PICTURE = EngineShapes(width=256, height=256, frame_batch=1, unet_batch=len(PRESET_SLOTS))  # the tiny preset's
NO_NATIVE_BF16 = "precision bf16 has no effect: this CPU has no native bf16"


@pytest.fixture(scope="module")
def native_bf16() -> bool:
    from engines.openvino_engine import cpu_computes_bf16, openvino_core

    return cpu_computes_bf16(openvino_core())


@pytest.fixture(scope="module")
def spec(tiny_model_dir) -> ModelSpec:
    return ModelSpec(model=str(tiny_model_dir.model_dir), vae=str(tiny_model_dir.taesd_dir))


def openvino(spec: ModelSpec, shapes: EngineShapes, precision: str, cache_root: Path):
    from engines.openvino_engine import OpenVinoOptions, create_openvino_engine

    return create_openvino_engine(spec, shapes, "cpu", 2, OpenVinoOptions(
        cache_root=cache_root, check_in_background=False, unet_precision=precision))


def test_auto_is_bf16_only_where_the_cpu_computes_it_and_an_explicit_bf16_says_when_it_cannot() -> None:
    from engines.openvino_engine import resolve_unet_precision

    assert resolve_unet_precision("auto", "CPU", native_bf16=True) == ("bf16", "")
    assert resolve_unet_precision("bf16", "CPU", native_bf16=True) == ("bf16", "")
    assert resolve_unet_precision("fp32", "CPU", native_bf16=True) == ("fp32", "")
    assert resolve_unet_precision("auto", "CPU", native_bf16=False) == ("fp32", "")  # silently: nothing was asked
    precision, note = resolve_unet_precision("bf16", "CPU", native_bf16=False)
    assert precision == "fp32" and note.startswith(NO_NATIVE_BF16) and "\n" not in note
    assert resolve_unet_precision("auto", "GPU", native_bf16=True) == ("fp32", "")
    precision, note = resolve_unet_precision("bf16", "GPU.1", native_bf16=True)
    assert precision == "fp32" and "GPU.1" in note and "f16" in note


def test_the_bf16_unet_rounds_like_bf16_and_the_rest_stays_fp32(native_bf16, tmp_path, caplog) -> None:
    """On the trained tiny model: random weights (tiny-random) amplify any rounding layer by layer."""
    tiny = ModelSpec(model="tiny")
    with caplog.at_level(logging.WARNING, logger="vcam.engines"):
        fp32 = openvino(tiny, SMALL, "fp32", tmp_path)
        bf16 = openvino(tiny, SMALL, "bf16", tmp_path)
    unet_inputs = example_inputs(predict_noise_spec(fp32.graphs.shapes, fp32.graphs.dims), seed=0)
    exact, rounded = fp32.predict_noise(*unet_inputs), bf16.predict_noise(*unet_inputs)
    relative = float((rounded - exact).norm() / exact.norm())
    embeddings = fp32.encode_prompt("a cat")
    assert torch.equal(bf16.encode_prompt("a cat"), embeddings)  # the text encoder is not the UNet
    assert not torch.isnan(rounded).any()  # a bf16 compile that imported f32's kernel blob gave NaN everywhere
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("precision bf16")]
    if native_bf16:
        assert bf16.unet_precision == "bf16" and not said
        # bf16 keeps 8 bits of mantissa: a relative error around 2^-8 per operation, not zero and not large.
        assert 1e-4 < relative < 0.05, relative
    else:
        assert bf16.unet_precision == "fp32" and len(said) == 1 and said[0].startswith(NO_NATIVE_BF16)
        assert relative == 0.0


def test_the_trained_models_pictures_in_bf16_stay_within_30_db_of_fp32(native_bf16, tmp_path) -> None:
    """The held-out photo through the stream at the tiny preset's settings, every style: PSNR of the bf16
    UNet's picture against fp32's (the INT8 target, README 'Benchmarks')."""
    from bench.tiny_figures import held_out_image, psnr, restyle
    from engines.tiny.styles import STYLES

    tiny = ModelSpec(model="tiny")
    fp32, bf16 = openvino(tiny, PICTURE, "fp32", tmp_path), openvino(tiny, PICTURE, "bf16", tmp_path)
    photo = held_out_image(256)
    for style in STYLES:
        exact, rounded = restyle(fp32, photo, style), restyle(bf16, photo, style)
        figure = psnr(exact, rounded)
        assert figure >= 30.0, f"{style}: PSNR of bf16 against fp32 {figure:.1f} dB"
        if native_bf16:
            assert not np.array_equal(exact, rounded)  # the bf16 UNet really ran


def test_bf16_asked_of_an_engine_without_it_is_one_line_naming_the_ones_with_it(spec) -> None:
    from engines.factory import create_engine

    for kind in ("torch", "onnxruntime"):
        with pytest.raises(EngineUnavailableError) as raised:
            create_engine(kind, spec, SMALL, device="cpu", threads=2, precision="bf16")
        message = str(raised.value)
        assert "\n" not in message and "openvino, auto" in message and "--precision fp32" in message


def test_auto_races_openvino_in_bf16_apart_from_the_fp32_race(spec, native_bf16, tmp_path) -> None:
    from engines.runtime_race import fastest_cpu_runtime

    fp32 = fastest_cpu_runtime(spec, SMALL, "cpu", 2, cache_root=tmp_path)
    bf16 = fastest_cpu_runtime(spec, SMALL, "cpu", 2, cache_root=tmp_path, unet_precision="bf16")
    assert fp32.measured and bf16.measured == native_bf16  # its own cache entry, unless it is the fp32 race
    if native_bf16:
        assert bf16.openvino_precision == "bf16" and "openvino (bf16 UNet)" in bf16.summary
    else:
        assert bf16.openvino_precision == "fp32" and bf16.seconds == fp32.seconds
