"""Presets: shipped files load, user files override them, and every mistake is one line naming file and key."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from core.config import StreamConfig
from vcam.presets import PresetError, list_presets, load_preset, user_preset_dir

SHIPPED = ("tiny", "sd-turbo-1step", "sd-turbo-2step", "lcm-lora-sd15")

MINIMAL = """
[[prompts]]
name = "a"
text = "first style"
"""


def write_preset(directory: Path, name: str, body: str) -> Path:
    path = directory / f"{name}.toml"
    path.write_text(textwrap.dedent(body))
    return path


def preset_error(tmp_path: Path, body: str) -> str:
    path = write_preset(tmp_path, "broken", body)
    with pytest.raises(PresetError) as caught:
        load_preset(path)
    message = str(caught.value)
    assert "\n" not in message, "a preset error must be one line"
    assert str(path) in message, "a preset error must name the file"
    return message


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_preset_loads_with_four_to_six_prompts(name: str) -> None:
    preset = load_preset(name)
    assert preset.name == name
    assert preset.source_path is not None and preset.source_path.name == f"{name}.toml"
    assert 4 <= len(preset.prompts) <= 6
    assert isinstance(preset.stream_config(), StreamConfig)


def test_list_presets_shows_shipped_presets_with_descriptions(tmp_path: Path) -> None:
    listed = {info.name: info for info in list_presets(user_dir=tmp_path)}
    assert set(SHIPPED) <= set(listed)
    assert all(listed[name].origin == "shipped" and listed[name].description for name in SHIPPED)


def test_shipped_presets_match_their_documented_settings() -> None:
    one_step = load_preset("sd-turbo-1step")
    assert (one_step.model.model, one_step.model.vae) == ("stabilityai/sd-turbo", "madebyollin/taesd")
    assert one_step.stream_config().t_index_list == (25,) and one_step.stream.guidance == "none"
    assert (one_step.stream.width, one_step.stream.height) == (512, 512)
    assert load_preset("sd-turbo-2step").stream_config().steps == 2
    lcm = load_preset("lcm-lora-sd15")
    assert lcm.model.lora == ("latent-consistency/lcm-lora-sdv1-5",)
    assert lcm.stream_config().steps == 4 and lcm.stream.guidance == "self"
    tiny = load_preset("tiny")
    assert tiny.model.model == "tiny" and (tiny.stream.width, tiny.stream.height) == (256, 256)
    assert tiny.stream_config().steps == 1


def test_shipped_presets_are_found_from_any_working_directory(tmp_path: Path) -> None:
    # Run outside the checkout, as an installed `vcam` is: the presets must come from the package, not the cwd.
    script = "from vcam.presets import list_presets; print(','.join(p.name for p in list_presets()))"
    env = {**os.environ, "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "config")}
    env.pop("PYTHONPATH", None)
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert set(SHIPPED) <= set(result.stdout.strip().split(","))


def test_user_preset_overrides_shipped_preset_of_the_same_name(tmp_path: Path) -> None:
    write_preset(tmp_path, "tiny", 'description = "my tiny"\n' + MINIMAL)
    listed = {info.name: info for info in list_presets(user_dir=tmp_path)}
    assert listed["tiny"].origin == "user" and listed["tiny"].description == "my tiny"
    assert load_preset("tiny", user_dir=tmp_path).prompt_names == ["a"]


def test_user_preset_dir_follows_the_platform_config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert user_preset_dir() == tmp_path / "vcam" / "presets"
    user_preset_dir().mkdir(parents=True)
    write_preset(user_preset_dir(), "mine", MINIMAL)
    assert "mine" in {info.name for info in list_presets()}


def test_a_broken_user_preset_is_listed_as_unreadable_not_fatal(tmp_path: Path) -> None:
    write_preset(tmp_path, "broken", "[stream\n")
    listed = {info.name: info for info in list_presets(user_dir=tmp_path)}
    assert listed["broken"].description.startswith("(unreadable:") and "tiny" in listed


def test_unknown_preset_name_lists_the_available_ones(tmp_path: Path) -> None:
    with pytest.raises(PresetError, match="unknown preset 'nope'; available: .*tiny"):
        load_preset("nope", user_dir=tmp_path)


def test_a_folder_named_like_a_preset_does_not_shadow_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "tiny").mkdir()
    monkeypatch.chdir(tmp_path)
    assert load_preset("tiny").model.model == "tiny"


def test_missing_preset_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(PresetError, match="no such preset file"):
        load_preset(tmp_path / "absent.toml")


def test_defaults_fill_missing_sections_and_prompt_hotkeys_count_from_one(tmp_path: Path) -> None:
    body = "".join(f'[[prompts]]\nname = "p{i}"\ntext = "style {i}"\n' for i in range(10))
    preset = load_preset(write_preset(tmp_path, "ten", body))
    assert preset.output.width == 1280 and preset.output.fit == "crop" and preset.osc.port == 9000
    assert [p.hotkey for p in preset.prompts[:2]] == ["<ctrl>+<alt>+1", "<ctrl>+<alt>+2"]
    assert preset.prompts[8].hotkey == "<ctrl>+<alt>+9" and preset.prompts[9].hotkey == ""


def test_strength_and_steps_map_onto_the_t_index_list(tmp_path: Path) -> None:
    preset = load_preset(write_preset(tmp_path, "s", "[stream]\nstrength = 0.5\nsteps = 2\n" + MINIMAL))
    assert preset.stream_config().t_index_list == (25, 38)


def test_unknown_key_names_the_dotted_key_and_the_allowed_ones(tmp_path: Path) -> None:
    message = preset_error(tmp_path, "[stream]\nguidence = 'self'\n" + MINIMAL)
    assert "stream.guidence: unknown key; allowed here:" in message and "guidance" in message


def test_wrong_choice_names_the_allowed_values(tmp_path: Path) -> None:
    message = preset_error(tmp_path, "[stream]\nguidance = 'half'\n" + MINIMAL)
    assert "stream.guidance: must be one of none, full, self, initialize, got 'half'" in message


def test_wrong_type_is_reported_with_the_expected_type(tmp_path: Path) -> None:
    message = preset_error(tmp_path, "[output]\nwidth = '1280'\n" + MINIMAL)
    assert "output.width: must be an integer, got a string '1280'" in message
    assert "output.mirror: must be true or false" in preset_error(tmp_path, "[output]\nmirror = 1\n" + MINIMAL)


def test_out_of_range_value_names_the_range(tmp_path: Path) -> None:
    assert "osc.port: must be from 1 to 65535, got 70000" in preset_error(tmp_path, "[osc]\nport = 70000\n" + MINIMAL)


def test_stream_rules_of_the_core_are_reported_as_preset_errors(tmp_path: Path) -> None:
    assert "multiples of 8" in preset_error(tmp_path, "[stream]\nwidth = 100\n" + MINIMAL)
    assert "strictly increasing" in preset_error(tmp_path, "[stream]\nt_index_list = [45, 32]\n" + MINIMAL)
    assert "not both" in preset_error(tmp_path, "[stream]\nt_index_list = [1]\nstrength = 0.5\n" + MINIMAL)


def test_a_core_rule_names_the_presets_key_first_and_the_flag_after(tmp_path: Path) -> None:
    """The same rule guards the preset and the command line, so its line names both, the preset's key first."""
    assert "use fewer steps (--steps) or more strength (--strength)" in preset_error(
        tmp_path, "[stream]\nstrength = 0.04\nsteps = 4\n" + MINIMAL)
    assert "e.g. t_index_list = [32, 45] (--t-index-list 32,45)" in preset_error(
        tmp_path, "[stream]\nt_index_list = []\n" + MINIMAL)


def test_obs_password_in_a_preset_is_refused_with_where_it_belongs(tmp_path: Path) -> None:
    message = preset_error(tmp_path, "[obs]\npassword = 'hunter2'\n" + MINIMAL)
    assert "obs.password" in message and "VCAM_OBS_PASSWORD" in message and "keyring" in message
    assert "hunter2" not in message


def test_obs_scene_must_name_an_existing_prompt(tmp_path: Path) -> None:
    good = load_preset(write_preset(tmp_path, "ok", '[obs]\nscenes = { "Intro" = "a" }\n' + MINIMAL))
    assert dict(good.obs.scenes) == {"Intro": "a"}
    message = preset_error(tmp_path, '[obs]\nscenes = { "Intro" = "zzz" }\n' + MINIMAL)
    assert "obs.scenes.Intro" in message and "'zzz'" in message


def test_duplicate_prompt_names_are_refused(tmp_path: Path) -> None:
    message = preset_error(tmp_path, MINIMAL + MINIMAL)
    assert "prompts[1].name: duplicate prompt name 'a'" in message


def test_preset_without_prompts_is_refused(tmp_path: Path) -> None:
    assert "prompts: a preset needs at least one [[prompts]]" in preset_error(tmp_path, "description = 'x'\n")


def test_invalid_hotkey_is_refused_with_the_syntax(tmp_path: Path) -> None:
    message = preset_error(tmp_path, "[hotkeys]\npause = 'ctrl+alt+p'\n" + MINIMAL)
    assert "hotkeys.pause: 'ctrl+alt+p' is not a valid hotkey" in message and "<ctrl>+<alt>+p" in message


def test_two_actions_on_one_hotkey_are_refused(tmp_path: Path) -> None:
    message = preset_error(tmp_path, "[hotkeys]\npause = '<ctrl>+<alt>+1'\n" + MINIMAL)
    assert "prompts[0].hotkey: '<ctrl>+<alt>+1' is already bound by hotkeys.pause" in message


def test_empty_hotkey_disables_an_action(tmp_path: Path) -> None:
    preset = load_preset(write_preset(tmp_path, "quiet", "[hotkeys]\nfilter = ''\n" + MINIMAL))
    assert preset.hotkeys.filter == ""


def test_invalid_toml_is_one_line_naming_the_file(tmp_path: Path) -> None:
    assert "not valid TOML" in preset_error(tmp_path, "[stream\nwidth = 1\n")


def test_a_preset_that_is_not_utf8_is_one_line_naming_the_byte_and_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(('description = "caf\xe9"\n' + MINIMAL).encode("latin-1"))
    with pytest.raises(PresetError) as caught:
        load_preset(path)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message
    assert "not UTF-8" in message and "0xe9" in message and "line 1" in message and "save the file as UTF-8" in message


def test_a_huge_preset_is_refused_before_parsing(tmp_path: Path) -> None:
    path = tmp_path / "huge.toml"
    path.write_bytes(b'description = "' + b"x" * 50_000_000 + b'"\n' + MINIMAL.encode())
    with pytest.raises(PresetError, match="larger than 1 MB") as caught:
        load_preset(path)
    assert str(path) in str(caught.value) and len(str(caught.value)) < 300


def test_toml_nested_too_deeply_is_one_line_not_a_recursion_error(tmp_path: Path) -> None:
    assert "nested too deeply" in preset_error(tmp_path, "a = " + "[" * 100_000 + "]" * 100_000 + "\n")


def test_one_bad_file_never_hides_the_other_presets_and_every_listed_line_is_short(tmp_path: Path) -> None:
    config = tmp_path / "config"
    folder = config / "vcam" / "presets"
    folder.mkdir(parents=True)
    (folder / "latin1.toml").write_bytes(b'description = "caf\xe9"\n' + MINIMAL.encode())
    (folder / "huge.toml").write_bytes(b'description = "' + b"x" * 50_000_000 + b'"\n')
    write_preset(folder, "long", f'description = "{"y" * 5000}"\n' + MINIMAL)
    write_preset(folder, "mine", 'description = "my own"\n' + MINIMAL)
    env = {**os.environ, "XDG_CONFIG_HOME": str(config)}
    result = subprocess.run([sys.executable, "-m", "vcam.cli", "presets"], env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    listed = {line.split()[0]: line for line in result.stdout.splitlines() if not line.startswith("(")}
    assert set(SHIPPED) | {"latin1", "huge", "long", "mine"} <= set(listed)
    assert "not UTF-8" in listed["latin1"] and "larger than 1 MB" in listed["huge"] and "my own" in listed["mine"]
    assert max(len(line) for line in result.stdout.splitlines()) < 400


def test_the_old_key_frame_buffer_still_loads_with_a_notice_naming_the_new_one(tmp_path: Path) -> None:
    preset = load_preset(write_preset(tmp_path, "old", "[stream]\nframe_buffer = 2\n" + MINIMAL))
    assert preset.stream.frame_buffer_size == 2
    assert len(preset.notices) == 1 and str(tmp_path / "old.toml") in preset.notices[0]
    assert "stream.frame_buffer is now called stream.frame_buffer_size" in preset.notices[0]
    both = preset_error(tmp_path, "[stream]\nframe_buffer = 2\nframe_buffer_size = 2\n" + MINIMAL)
    assert "stream.frame_buffer: is the old name of frame_buffer_size" in both


def test_the_old_key_is_said_once_even_when_the_run_then_stops_on_an_error(tmp_path: Path) -> None:
    path = write_preset(tmp_path, "old", "[stream]\nframe_buffer = 1\n" + MINIMAL)
    result = subprocess.run([sys.executable, "-m", "vcam.cli", "bench", "--preset", str(path), "--width", "100"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if line.startswith("vcam: error:")] == [
        "vcam: error: width and height must be positive multiples of 8, got 100x512"]
    notes = [line for line in result.stderr.splitlines() if line.startswith("vcam: note:")]
    assert len(notes) == 1 and "stream.frame_buffer is now called stream.frame_buffer_size" in notes[0]


@pytest.mark.parametrize("name", SHIPPED)
def test_no_shipped_preset_sets_anything_that_changes_nothing(name: str) -> None:
    assert load_preset(name).notices == ()


@pytest.mark.parametrize("stream, words", [
    ("guidance = 'self'\nguidance_scale = 1.4\nnegative_prompt = 'blurry'", "no effect with guidance self"),
    ("guidance = 'full'\nguidance_scale = 1.0", "guidance full at guidance scale 1 runs as none"),
    ("negative_prompt = 'blurry'", "the negative prompt has no effect at guidance none"),
])
def test_a_stream_setting_that_changes_nothing_is_noted_once_with_the_file(tmp_path: Path, stream: str,
                                                                          words: str) -> None:
    preset = load_preset(write_preset(tmp_path, "inert", f"[stream]\n{stream}\n" + MINIMAL))
    assert len(preset.notices) == 1, preset.notices
    assert preset.notices[0].startswith(f"{tmp_path / 'inert.toml'}: stream: ") and words in preset.notices[0]


def test_a_negative_prompt_with_full_guidance_above_1_is_not_noted(tmp_path: Path) -> None:
    body = "[stream]\nguidance = 'full'\nguidance_scale = 2.0\nnegative_prompt = 'blurry'\n" + MINIMAL
    assert load_preset(write_preset(tmp_path, "fine", body)).notices == ()


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_a_number_that_is_not_finite_is_refused(tmp_path: Path, value: str) -> None:
    assert f"stream.guidance_scale: must be a finite number, got {float(value)}" in preset_error(
        tmp_path, f"[stream]\nguidance_scale = {value}\n" + MINIMAL)


# -- the user's default preset: `vcam presets default [NAME]`, a real `vcam` process in an isolated home -----------


def vcam_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`vcam ARGS` in this test's environment (`isolated_home` has set HOME and the XDG folders)."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.run([sys.executable, "-m", "vcam.cli", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=120)


def test_without_a_choice_the_default_is_vcams_own_and_both_listings_say_how_to_set_yours(isolated_home: Path) -> None:
    shown = vcam_cli("presets", "default")
    expected = "default preset: sd-turbo-1step (vcam's built-in default; `vcam presets default NAME` sets yours)"
    assert shown.returncode == 0 and shown.stdout.strip() == expected
    assert vcam_cli("presets").stdout.splitlines()[-1] == expected


def test_setting_the_default_stores_it_beside_the_user_presets_and_says_which_commands_use_it(
        isolated_home: Path) -> None:
    result = vcam_cli("presets", "default", "tiny")
    stored = isolated_home / ".config" / "vcam" / "default-preset"
    assert result.returncode == 0 and stored.read_text() == "tiny\n"
    assert all(command in result.stdout for command in ("`vcam run`", "`vcam doctor`", "`vcam service install`"))
    assert vcam_cli("presets", "default").stdout.strip() == f"default preset: tiny (your default, set in {stored})"


def test_an_unknown_name_is_one_line_naming_vcam_presets_and_keeps_the_previous_default(isolated_home: Path) -> None:
    assert vcam_cli("presets", "default", "tiny").returncode == 0
    result = vcam_cli("presets", "default", "tiyn")
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1
    assert "unknown preset 'tiyn'" in result.stderr and "`vcam presets`" in result.stderr
    assert result.stderr.rstrip().endswith("the default preset is unchanged")
    assert (isolated_home / ".config" / "vcam" / "default-preset").read_text() == "tiny\n"


def test_a_broken_preset_cannot_become_the_default(isolated_home: Path) -> None:
    user_preset_dir().mkdir(parents=True)
    mine = write_preset(user_preset_dir(), "mine", "[stream\n")
    result = vcam_cli("presets", "default", "mine")
    assert result.returncode == 2 and str(mine) in result.stderr and "not valid TOML" in result.stderr
    assert not (isolated_home / ".config" / "vcam" / "default-preset").exists()


def test_a_preset_file_is_stored_by_its_absolute_path_so_it_works_from_any_folder(isolated_home: Path,
                                                                                 tmp_path: Path) -> None:
    (tmp_path / "shows").mkdir()
    show = write_preset(tmp_path / "shows", "show", MINIMAL)
    assert vcam_cli("presets", "default", "shows/show.toml", cwd=tmp_path).returncode == 0
    assert (isolated_home / ".config" / "vcam" / "default-preset").read_text() == f"{show}\n"
    assert vcam_cli("presets", "default", cwd=isolated_home).stdout.startswith(f"default preset: {show} (")


def test_a_default_preset_deleted_since_it_was_chosen_is_one_line_naming_the_file_that_chose_it(
        isolated_home: Path) -> None:
    user_preset_dir().mkdir(parents=True)
    mine = write_preset(user_preset_dir(), "mine", MINIMAL)
    assert vcam_cli("presets", "default", "mine").returncode == 0
    mine.unlink()
    result = vcam_cli("run", "--source", "synthetic", "--sink", "null", "--frames", "1", "--no-tray", "--no-hotkeys")
    stored = isolated_home / ".config" / "vcam" / "default-preset"
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    assert f"your default preset 'mine' (set in {stored}) cannot be used: unknown preset 'mine'" in result.stderr
    assert "`vcam presets default NAME` sets another" in result.stderr
    shown = vcam_cli("presets", "default")  # the command that shows the default says it as well
    assert shown.returncode == 2 and len(shown.stderr.splitlines()) == 1 and "cannot be used" in shown.stderr
    listing = vcam_cli("presets")
    assert listing.returncode == 0 and "tiny" in listing.stdout
    assert listing.stdout.splitlines()[-1].startswith("default preset: your default preset 'mine'")


def test_a_hand_edited_default_that_holds_no_name_is_one_line_and_the_listing_still_works(isolated_home: Path) -> None:
    stored = isolated_home / ".config" / "vcam" / "default-preset"
    stored.parent.mkdir(parents=True)
    stored.write_text("\n\n")
    shown = vcam_cli("presets", "default")
    assert shown.returncode == 2 and len(shown.stderr.splitlines()) == 1
    assert f"{stored}: should hold one preset name" in shown.stderr
    listing = vcam_cli("presets")
    assert listing.returncode == 0 and "tiny" in listing.stdout and "should hold one preset name" in listing.stdout
