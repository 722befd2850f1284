"""Specification of `vcam doctor`: a real `vcam` process on this machine, which has no GPU, no camera, no
virtual-camera device, no display and an empty Hugging Face cache (HF_HOME points at a temporary folder)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _doctor(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HOME": str(tmp_path / "hf")}
    for name in ("DISPLAY", "WAYLAND_DISPLAY", "VCAM_OBS_PASSWORD"):
        env.pop(name, None)
    return subprocess.run([sys.executable, "-m", "vcam.cli", "doctor", *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=300)


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
    assert checks["model"]["status"] == "FAIL" and "stabilityai/sd-turbo" in checks["model"]["detail"]
    assert checks["model"]["fix"].startswith("vcam models pull sd-turbo-1step")
    assert [name for name, check in checks.items() if check["status"] == "FAIL"] == ["model"]
    assert all(check["fix"] for check in checks.values() if check["status"] != "OK")
    assert {"python", "onnxruntime", "tensorrt", "hotkeys", "tray", "obs", "disk"} <= set(checks)


def test_the_tiny_preset_has_all_it_needs_here_so_doctor_exits_0_with_one_line_per_check(tmp_path: Path) -> None:
    result = _doctor(["--preset", "tiny"], tmp_path)
    assert result.returncode == 0, result.stdout
    header, *lines = result.stdout.splitlines()
    assert header == "vcam doctor: checks for the preset 'tiny'"
    assert all(line.split()[0] in ("OK", "WARN") for line in lines)
    [model] = [line for line in lines if line.split()[1] == "model"]
    assert model.startswith("OK") and "engines/tiny/weights" in model
    assert any(line.startswith("WARN hotkeys") and "-> " in line for line in lines)


def test_a_preset_that_does_not_exist_is_one_line(tmp_path: Path) -> None:
    result = _doctor(["--preset", "no-such-preset"], tmp_path)
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith("vcam: error:")
