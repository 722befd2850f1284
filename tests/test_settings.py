"""How a run's settings are resolved: built-in defaults < preset < command line."""
from __future__ import annotations

import pytest

from vcam.cli import build_parser
from vcam.settings import RunSettings, SettingsError, resolve_settings


def settings_for(*argv: str, preset: str = "tiny"):
    return resolve_settings(build_parser().parse_args(["run", *argv]), default_preset=preset)


def test_flags_override_the_preset_and_the_preset_overrides_defaults() -> None:
    from_preset = settings_for()
    assert from_preset.stream.width == 256 and from_preset.stream.t_index_list == (48,)
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


def test_a_setting_the_command_line_leaves_out_keeps_the_presets_value(tmp_path) -> None:
    preset = tmp_path / "mine.toml"
    preset.write_text("[stream]\nguidance = 'self'\nguidance_scale = 1.4\ndelta = 0.5\n"
                      "[[prompts]]\nname = 'a'\ntext = 'first style'\n")
    stream = settings_for("--preset", str(preset), "--guidance-scale", "2.0").stream
    assert (stream.guidance, stream.guidance_scale, stream.delta) == ("self", 2.0, 0.5)


def test_guidance_is_the_mode_and_guidance_scale_the_scale_everywhere() -> None:
    stream = settings_for("--guidance", "full", "--guidance-scale", "1.5", "--frame-buffer-size", "2").stream
    assert (stream.guidance, stream.guidance_scale, stream.frame_buffer_size) == ("full", 1.5, 2)


def test_old_option_spellings_give_the_same_settings_and_one_notice_each() -> None:
    old = build_parser().parse_args(["run", "--cfg", "full", "--guidance", "1.5", "--frame-buffer", "2"])
    new = build_parser().parse_args(["run", "--guidance", "full", "--guidance-scale", "1.5", "--frame-buffer-size",
                                     "2"])
    assert resolve_settings(old).stream == resolve_settings(new).stream
    assert new.notices == ()
    assert len(old.notices) == 3
    assert any("--cfg is now --guidance" in n for n in old.notices)
    assert any("--guidance 1.5 (a number) is now --guidance-scale 1.5" in n for n in old.notices)
    assert any("--frame-buffer is now --frame-buffer-size" in n for n in old.notices)


def test_command_line_values_are_checked_like_preset_values_and_name_the_option() -> None:
    with pytest.raises(SettingsError, match="--width: must be from 64 to 2048, got 32"):
        settings_for("--width", "32")
    with pytest.raises(SettingsError, match="--ssf-threshold: must be from 0.0 to 1.0, got 1.5"):
        settings_for("--ssf-threshold", "1.5")
    with pytest.raises(SystemExit):  # argparse's own one-line usage error for a wrong choice
        settings_for("--guidance", "half")


def test_camera_size_and_rate_0_ask_the_camera_for_nothing_and_keep_its_own_mode() -> None:
    default = resolve_settings(build_parser().parse_args(["run"]), "tiny").source_config  # tiny: no camera size
    assert (default.width, default.height) == (0, 0)
    typed = resolve_settings(build_parser().parse_args(["run", "--camera-width", "0", "--camera-height", "0",
                                                        "--camera-fps", "0"]), "tiny").source_config
    assert (typed.width, typed.height, typed.fps) == (0, 0, None)
    assert typed.pattern_size == (1280, 720), "a generated source (sample, synthetic) still has a size"


def test_obs_and_osc_switches_override_the_preset_once_in_the_settings(tmp_path) -> None:
    preset = tmp_path / "controls.toml"
    preset.write_text('[obs]\nenabled = true\nport = 4460\n\n[osc]\nport = 9100\n\n'
                      '[[prompts]]\nname = "a"\ntext = "a watercolour painting"\n')

    def run(*args: str) -> RunSettings:
        return resolve_settings(build_parser().parse_args(["run", "--preset", str(preset), *args]))

    as_preset = run()
    assert (as_preset.obs.enabled, as_preset.obs.port, as_preset.osc.enabled, as_preset.osc.port) == (True, 4460,
                                                                                                      False, 9100)
    switched = run("--no-obs", "--osc")  # the options `vcam run` always had (--obs, --osc) and their negations
    assert (switched.obs.enabled, switched.obs.port, switched.osc.enabled, switched.osc.port) == (False, 4460,
                                                                                                 True, 9100)
    bench = build_parser().parse_args(["bench", "--preset", str(preset)])
    assert not hasattr(bench, "obs.enabled") and resolve_settings(bench).obs.enabled, "bench: no switch, the preset's"


def test_every_preset_key_is_also_an_option() -> None:
    parser = build_parser()
    settings = resolve_settings(parser.parse_args(
        ["run", "--camera-width", "640", "--camera-fps", "15", "--output-width", "800", "--output-backend", "x",
         "--device", "cpu", "--threads", "2", "--engine", "onnxruntime", "--ssf", "--ssf-max-skip", "3"]), "tiny")
    assert (settings.source_config.width, settings.source_config.fps) == (640, 15)
    assert settings.sink_config.width == 800 and settings.sink_config.backend == "x"
    assert (settings.device, settings.threads, settings.engine) == ("cpu", 2, "onnxruntime")
    assert settings.filter.enabled and settings.filter.max_skip == 3
