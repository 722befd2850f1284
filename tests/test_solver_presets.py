"""Specs of the shipped DPM-Solver++ presets: they load, name StreamConfig's fields, and fall back offline."""
from __future__ import annotations

from dataclasses import replace

import pytest

from vcam.cli import build_parser
from vcam.presets import load_preset
from engines.base import ModelError
from vcam.fallbacks import settle_model, with_tiny_model
from vcam.settings import resolve_settings

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("name", ["tiny-dpm", "sd15-dpm"])
def test_dpm_presets_load_with_four_to_six_prompts_and_a_working_guidance(name):
    preset = load_preset(name)
    config = preset.stream_config()
    assert 4 <= len(preset.prompts) <= 6
    assert (config.scheduler, config.solver_order, config.guidance) == ("dpmsolver++", 2, "full")
    assert config.unet_batch == 2 * config.steps * config.frame_buffer_size  # static engine shape, known ahead


def test_sd15_dpm_preset_is_ten_steps_at_strength_point_six_with_cfg_seven():
    config = load_preset("sd15-dpm").stream_config()
    assert (config.num_inference_steps, config.strength, config.guidance_scale) == (10, 0.6, 7.0)
    assert config.steps == 6 and (config.width, config.height) == (512, 512)


def test_tiny_dpm_preset_runs_four_slots_of_an_eight_step_schedule():
    config = load_preset("tiny-dpm").stream_config()
    assert (config.num_inference_steps, config.steps, config.width) == (8, 4, 256)


def test_a_dpm_preset_whose_model_is_missing_falls_back_to_tiny_dpm_with_its_own_negative_prompt():
    # A preset's negative prompt is written for its model: the tiny model's unconditional prompt is the empty one,
    # and sd15-dpm's "low quality, blurry, ..." blew tiny's CFG output out to black and white.
    preset = load_preset("sd15-dpm")
    settings = resolve_settings(build_parser().parse_args(["run", "--preset", "sd15-dpm"]))
    assert settings.stream.scheduler == "dpmsolver++"
    fallback = with_tiny_model(settings)
    assert fallback.model.model == "tiny"
    assert fallback.stream == load_preset("tiny-dpm").stream_config(prompt=preset.prompts[0].text)
    assert preset.stream.negative_prompt and fallback.stream.negative_prompt == ""


def test_an_lcm_preset_still_falls_back_to_tiny():
    settings = resolve_settings(build_parser().parse_args(["run", "--preset", "sd-turbo-1step"]))
    assert with_tiny_model(settings).stream.t_index_list == load_preset("tiny").stream_config().t_index_list


@pytest.mark.parametrize("args, kept", [
    (["--engine", "onnxruntime"], {"engine": "onnxruntime"}),
    (["--width", "128", "--height", "192"], {"width": 128, "height": 192}),
    (["--t-index-list", "10,20,30"], {"t_index_list": (10, 20, 30)}),
    (["--strength", "0.6", "--steps", "3"], {"t_index_list": (20, 30, 40)}),
    (["--guidance", "full", "--guidance-scale", "2.5"], {"guidance": "full", "guidance_scale": 2.5}),
    (["--seed", "7", "--device", "cpu", "--threads", "1"], {"seed": 7, "device": "cpu", "threads": 1}),
])
def test_the_fallback_to_tiny_changes_the_model_and_keeps_every_typed_option(args, kept):
    settings = resolve_settings(build_parser().parse_args(["run", "--preset", "sd-turbo-1step", *args]))
    fallback = with_tiny_model(settings)
    assert fallback.model.model == "tiny"
    for name, value in kept.items():
        where = fallback if name in ("engine", "device", "threads") else fallback.stream
        assert getattr(where, name) == value, name
    untyped = load_preset("tiny").stream_config()
    if "--width" not in args:  # what was not typed is the fallback preset's (its resolution suits the model)
        assert (fallback.stream.width, fallback.stream.height) == (untyped.width, untyped.height)


def test_a_missing_preset_model_is_said_in_one_line_naming_what_was_kept_and_the_prompts_that_stay(
        isolated_home, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(isolated_home / "empty-hf"))  # sd-turbo is not on this machine
    settings = resolve_settings(build_parser().parse_args(["run", "--preset", "sd-turbo-1step", "--width", "128"]))
    said: list[str] = []
    settled = settle_model(settings, said.append)
    assert settled.model.model == "tiny" and settled.stream.width == 128
    [line] = said
    assert "stabilityai/sd-turbo" in line and "'tiny' preset's model" in line
    assert "kept from the command line: --width" in line
    assert "sd-turbo-1step's prompts ('anime'" in line and "--preset tiny" in line  # the tiny model draws 5 styles


def test_a_typed_model_that_is_missing_is_an_error_not_a_fallback(isolated_home):
    settings = resolve_settings(build_parser().parse_args(["run", "--model", str(isolated_home / "no-model")]))
    with pytest.raises(ModelError, match="does not exist"):
        settle_model(settings, lambda line: pytest.fail(f"said {line!r}"))


def test_a_model_on_this_machine_is_kept_without_a_word():
    settings = resolve_settings(build_parser().parse_args(["run", "--preset", "tiny"]))
    assert settle_model(settings, lambda line: pytest.fail(f"said {line!r}")) is settings
