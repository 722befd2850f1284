"""How a run's settings are resolved: built-in defaults < preset < command line."""
from __future__ import annotations

import pytest

from vcam.cli import build_parser
from vcam.settings import SettingsError, resolve_settings


def settings_for(*argv: str, preset: str = "tiny"):
    return resolve_settings(build_parser().parse_args(["run", *argv]), default_preset=preset)


def test_flags_override_the_preset_and_the_preset_overrides_defaults() -> None:
    from_preset = settings_for()
    assert from_preset.stream.width == 256 and from_preset.stream.t_index_list == (32, 45)
    flagged = settings_for("--width", "128", "--t-index-list", "10,20,30", "--cfg", "full", "--guidance", "1.5",
                           "--frame-buffer", "2", "--seed", "7", "--ssf-threshold", "0.9", "--no-ssf")
    stream = flagged.stream
    assert (stream.width, stream.height) == (128, 256)
    assert stream.t_index_list == (10, 20, 30) and stream.guidance == "full" and stream.guidance_scale == 1.5
    assert stream.frame_buffer_size == 2 and stream.seed == 7 and stream.unet_batch == 2 * 3 * 2
    assert flagged.filter.threshold == 0.9 and not flagged.filter.enabled


def test_strength_and_steps_replace_the_index_list_and_cannot_be_mixed_with_it() -> None:
    assert settings_for("--strength", "0.5", "--steps", "2").stream.t_index_list == (25, 38)
    with pytest.raises(SettingsError, match="not both"):
        settings_for("--strength", "0.5", "--t-index-list", "32,45")


def test_the_prompt_flag_becomes_the_first_prompt_and_keeps_the_preset_ones() -> None:
    settings = settings_for("--prompt", "a bronze statue")
    assert settings.stream.prompt == "a bronze statue"
    assert settings.prompts[0].text == "a bronze statue" and len(settings.prompts) > 1


def test_another_model_keeps_its_own_vae_unless_vae_is_given() -> None:
    turbo = settings_for(preset="sd-turbo-1step")
    assert turbo.model.vae == "madebyollin/taesd"
    assert settings_for("--model", "/models/other", preset="sd-turbo-1step").model.vae is None
    assert settings_for("--model", "/models/other", "--vae", "/vae/taesd", preset="sd-turbo-1step").model.vae == \
        "/vae/taesd"
    assert settings_for("--vae", "none", preset="sd-turbo-1step").model.vae is None


def test_tokenizer_and_lora_reach_the_model_spec() -> None:
    spec = settings_for("--model", "/m.safetensors", "--tokenizer", "/tok", "--lora", "/a.safetensors",
                        "--lora", "/b.safetensors", "--lora-scale", "0.5").model
    assert spec.tokenizer == "/tok" and spec.lora == ("/a.safetensors", "/b.safetensors") and spec.lora_scale == 0.5


def test_output_size_fit_and_mirror_shape_the_virtual_camera() -> None:
    sink = settings_for("--output-size", "640x360", "--output-fps", "25", "--fit", "letterbox", "--mirror").sink_config
    assert (sink.width, sink.height, sink.fps, sink.fit, sink.mirror) == (640, 360, 25, "letterbox", True)
    with pytest.raises(SettingsError, match="WIDTHxHEIGHT"):
        settings_for("--output-size", "big")
