"""Specification of `vcam doctor`: a real `vcam` process on this machine, which has no GPU, no camera, no
virtual-camera device, no display and an empty Hugging Face cache (HF_HOME points at a temporary folder); the OBS
check against a real OBS Studio under Xvfb (`tests.obs_harness`)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.obs_harness import ObsInstance, free_port

ROOT = Path(__file__).resolve().parents[1]


def _doctor(args: list[str], tmp_path: Path, obs_password: str | None = None) -> subprocess.CompletedProcess:
    """`vcam doctor ARGS`; VCAM_OBS_PASSWORD is the developer's own only if it is passed here (never inherited)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HOME": str(tmp_path / "hf")}
    for name in ("DISPLAY", "WAYLAND_DISPLAY", "VCAM_OBS_PASSWORD"):
        env.pop(name, None)
    if obs_password is not None:
        env["VCAM_OBS_PASSWORD"] = obs_password
    return subprocess.run([sys.executable, "-m", "vcam.cli", "doctor", *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=300)


def _checks(result: subprocess.CompletedProcess) -> dict[str, dict[str, str]]:
    return {check["name"]: check for check in json.loads(result.stdout)["checks"]}


def test_json_report_names_the_cpu_the_missing_devices_and_the_missing_model_and_fails(tmp_path: Path) -> None:
    result = _doctor(["--json", "--preset", "sd-turbo-1step"], tmp_path)
    report = json.loads(result.stdout)
    checks = {check["name"]: check for check in report["checks"]}
    assert result.returncode == 1 and report["ok"] is False and report["preset"] == "sd-turbo-1step"
    assert checks["torch"]["status"] == "OK" and "CPU build" in checks["torch"]["detail"]
    assert checks["gpu"]["status"] == "WARN" and "runs on the CPU" in checks["gpu"]["detail"]
    assert checks["camera"]["status"] == "WARN" and "sample photo" in checks["camera"]["detail"]
    assert checks["virtual camera"]["status"] == "WARN"
    assert checks["virtual camera"]["fix"] == "bash installer/linux/setup-v4l2loopback.sh"
    assert "setup-v4l2loopback" not in checks["virtual camera"]["detail"], "the fix is said once, in its column"
    assert checks["model"]["status"] == "FAIL" and "stabilityai/sd-turbo" in checks["model"]["detail"]
    assert checks["model"]["fix"].startswith("vcam models pull sd-turbo-1step")
    assert [name for name, check in checks.items() if check["status"] == "FAIL"] == ["model"]
    assert all(check["fix"] for check in checks.values() if check["status"] != "OK")
    assert {"python", "onnxruntime", "openvino", "tensorrt", "hotkeys", "tray", "obs", "disk"} <= set(checks)
    assert checks["openvino"]["status"] == "OK" and "CPU" in checks["openvino"]["detail"]
    assert "a bf16 UNet by default" in checks["openvino"]["detail"] or "no native bf16" in checks["openvino"]["detail"]


def test_the_tiny_preset_has_all_it_needs_here_so_doctor_exits_0_with_one_line_per_check(tmp_path: Path) -> None:
    result = _doctor(["--preset", "tiny"], tmp_path)
    assert result.returncode == 0, result.stdout
    header, *lines = result.stdout.splitlines()
    assert header == "vcam doctor: checks for the preset 'tiny'"
    assert all(line.split()[0] in ("OK", "WARN") for line in lines)
    [model] = [line for line in lines if line.split()[1] == "model"]
    assert model.startswith("OK") and "preset tiny uses tiny: all its files are in" in model
    assert model.rstrip().endswith("engines/tiny/weights")
    assert any(line.startswith("WARN hotkeys") and "-> " in line for line in lines)


def test_a_preset_that_does_not_exist_is_one_line(tmp_path: Path) -> None:
    result = _doctor(["--preset", "no-such-preset"], tmp_path)
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith("vcam: error:")


def test_without_preset_doctor_checks_the_users_default_preset_and_says_whose_choice_it_is(
        isolated_home: Path) -> None:
    chosen = subprocess.run([sys.executable, "-m", "vcam.cli", "presets", "default", "tiny"], capture_output=True,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert chosen.returncode == 0, chosen.stderr
    result = _doctor(["--json"], isolated_home)
    report = json.loads(result.stdout)
    assert report["preset"] == "tiny" and _checks(result)["model"]["status"] == "OK" and result.returncode == 0
    stored = isolated_home / ".config" / "vcam" / "default-preset"
    assert result.stderr.splitlines() == [f"vcam: note: preset 'tiny': your default, set in {stored}"]


def test_without_any_choice_doctor_checks_vcams_own_default(isolated_home: Path) -> None:
    result = _doctor(["--json"], isolated_home)
    assert json.loads(result.stdout)["preset"] == "sd-turbo-1step" and "note" not in result.stderr

# -- the OBS check, against a real OBS (its WebSocket always asks for a password) --------------------------------


def _obs_preset(folder: Path, port: int, enabled: bool = True) -> Path:
    """A preset that runs the tiny model (present here) and uses OBS at 127.0.0.1:`port`."""
    path = folder / "with-obs.toml"
    path.write_text(f'[model]\nmodel = "tiny"\n\n[obs]\nenabled = {str(enabled).lower()}\nport = {port}\n\n'
                    '[[prompts]]\nname = "anime"\ntext = "anime style"\n')
    return path


def test_obs_reachable_with_the_right_password_is_ok(obs_instance: ObsInstance, isolated_home: Path) -> None:
    result = _doctor(["--json", "--preset", str(_obs_preset(isolated_home, obs_instance.port))], isolated_home,
                     obs_password=obs_instance.password)
    obs = _checks(result)["obs"]
    assert obs["status"] == "OK" and f"127.0.0.1:{obs_instance.port}, password accepted" in obs["detail"], obs
    assert result.returncode == 0, result.stdout


def test_a_wrong_obs_password_fails_the_preset_naming_where_the_right_one_is(obs_instance: ObsInstance,
                                                                            isolated_home: Path) -> None:
    result = _doctor(["--json", "--preset", str(_obs_preset(isolated_home, obs_instance.port))], isolated_home,
                     obs_password="not-the-password")
    obs = _checks(result)["obs"]
    assert obs["status"] == "FAIL" and result.returncode == 1
    assert "rejected the WebSocket password from VCAM_OBS_PASSWORD" in obs["detail"], obs
    assert obs["fix"] == "set VCAM_OBS_PASSWORD to the password shown in OBS > Tools > WebSocket Server Settings"
    assert "not-the-password" not in result.stdout + result.stderr and "Traceback" not in result.stderr


def test_no_obs_password_at_all_names_the_variable_and_the_keyring(obs_instance: ObsInstance,
                                                                  isolated_home: Path) -> None:
    result = _doctor(["--preset", str(_obs_preset(isolated_home, obs_instance.port))], isolated_home)
    [line] = [line for line in result.stdout.splitlines() if line.split()[1] == "obs"]
    assert line.startswith("FAIL obs") and "asks for a WebSocket password" in line, line
    assert "-> set VCAM_OBS_PASSWORD (or `keyring set vcam obs`)" in line and result.returncode == 1


def test_a_wrong_password_for_an_obs_the_preset_does_not_use_is_only_a_warning(obs_instance: ObsInstance,
                                                                              isolated_home: Path) -> None:
    preset = _obs_preset(isolated_home, obs_instance.port, enabled=False)
    result = _doctor(["--json", "--preset", str(preset)], isolated_home, obs_password="not-the-password")
    obs = _checks(result)["obs"]
    assert obs["status"] == "WARN" and obs["fix"].startswith("set VCAM_OBS_PASSWORD") and result.returncode == 0


def test_nothing_listening_is_a_warning_with_the_fix_since_vcam_connects_when_obs_starts(isolated_home: Path) -> None:
    port = free_port()
    result = _doctor(["--json", "--preset", str(_obs_preset(isolated_home, port))], isolated_home)
    obs = _checks(result)["obs"]
    assert obs["status"] == "WARN" and f"nothing listens at 127.0.0.1:{port}" in obs["detail"], obs
    assert "Enable WebSocket server" in obs["fix"] and result.returncode == 0


def test_nothing_listening_for_a_preset_without_obs_is_ok(isolated_home: Path) -> None:
    result = _doctor(["--json", "--preset", str(_obs_preset(isolated_home, free_port(), enabled=False))],
                     isolated_home)
    obs = _checks(result)["obs"]
    assert obs["status"] == "OK" and "not used by this preset" in obs["detail"], obs
