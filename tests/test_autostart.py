"""Specification of the background service: the entry each platform's manager reads, and `vcam service`.

The systemd unit is checked by systemd's own `systemd-analyze verify`; the LaunchAgent by plistlib (launchd's
format) for the keys launchd needs; the Task Scheduler task by parsing its XML for the command it runs. No service
manager is running here (no user session bus), so `vcam service` is specified up to telling the manager, and for
what it says when the manager cannot be reached. The clean stop (SIGTERM -> exit 0, so no restart) is specified
in tests/test_service_signals.py.
"""
from __future__ import annotations

import os
import plistlib
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from vcam.autostart import (LAUNCHD_LABEL, TASK_NAMESPACE, entry_for, entry_text, launch_agent, scheduled_task,
                            service_command, systemd_unit)

ROOT = Path(__file__).resolve().parents[1]


def _verify_user_unit(unit_text: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """`systemd-analyze --user verify` on the unit, with a private runtime folder (there is no user session here)."""
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is missing: run installer/linux/test-deps.sh (it installs systemd)")
    unit = tmp_path / "units" / "vcam.service"
    unit.parent.mkdir(parents=True, exist_ok=True)
    unit.write_text(unit_text)
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime), "SYSTEMD_LOG_COLOR": "0"}
    return subprocess.run(["systemd-analyze", "--user", "verify", str(unit)], capture_output=True, text=True,
                          env=env, timeout=120)


def test_the_systemd_unit_passes_systemd_analyze_verify_with_nothing_on_stderr(tmp_path: Path) -> None:
    command = service_command("tiny", tmp_path / "logs")
    result = _verify_user_unit(systemd_unit(command), tmp_path)
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_the_verifier_would_catch_a_broken_unit(tmp_path: Path) -> None:
    """The check above can fail: a misspelt directive is reported on stderr."""
    broken = systemd_unit(service_command("tiny", tmp_path)).replace("KillMode=mixed", "KillMode=gentle")
    assert "kill mode" in _verify_user_unit(broken, tmp_path).stderr


def test_a_path_with_spaces_and_percent_signs_is_quoted_so_systemd_runs_that_file(tmp_path: Path) -> None:
    scripts = tmp_path / "my venv 100%" / "bin"
    scripts.mkdir(parents=True)
    launcher = scripts / "vcam"
    launcher.write_text("#!/bin/sh\n")
    launcher.chmod(0o755)
    command = service_command("tiny", tmp_path, executable=str(scripts / "python"))
    assert command.argv[0] == str(launcher)
    unit = systemd_unit(command)
    assert '"' in unit and "100%%" in unit
    result = _verify_user_unit(unit, tmp_path)
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_the_unit_restarts_on_failure_only_and_runs_the_preset_with_the_tray() -> None:
    unit = systemd_unit(service_command("sd-turbo-2step", Path("/logs")))
    lines = unit.splitlines()
    assert "Restart=on-failure" in lines and "KillSignal=SIGTERM" in lines
    [exec_start] = [line for line in lines if line.startswith("ExecStart=")]
    assert exec_start.endswith("run --preset sd-turbo-2step --quiet") and "--no-tray" not in exec_start


def test_the_launch_agent_round_trips_through_plistlib_with_the_keys_launchd_needs(tmp_path: Path) -> None:
    command = service_command("tiny", tmp_path / "logs")
    agent = plistlib.loads(launch_agent(command))
    assert agent["Label"] == LAUNCHD_LABEL
    assert agent["ProgramArguments"] == list(command.argv)
    assert agent["RunAtLoad"] is True
    assert agent["KeepAlive"] == {"SuccessfulExit": False}  # restarted after a failure, not after a clean stop
    assert agent["StandardErrorPath"] == str(tmp_path / "logs" / "service.log")
    assert plistlib.loads(plistlib.dumps(agent)) == agent


def test_the_scheduled_task_runs_the_installed_vcam_at_log_on_and_restarts_on_failure(tmp_path: Path) -> None:
    command = service_command("tiny", tmp_path, executable=r"C:\Users\Ann Lee\vcam\.venv\Scripts\python.exe")
    xml_bytes = entry_text("taskscheduler", command, "PC\\Ann Lee")
    task = ET.fromstring(xml_bytes.decode("utf-16"))
    ns = {"t": TASK_NAMESPACE}
    assert task.findtext("t:Actions/t:Exec/t:Command", namespaces=ns) == command.argv[0]
    assert task.findtext("t:Actions/t:Exec/t:Arguments", namespaces=ns) == "-m vcam.cli run --preset tiny --quiet"
    assert task.findtext("t:Triggers/t:LogonTrigger/t:UserId", namespaces=ns) == "PC\\Ann Lee"
    assert task.findtext("t:Principals/t:Principal/t:LogonType", namespaces=ns) == "InteractiveToken"
    assert task.find("t:Settings/t:RestartOnFailure", ns) is not None
    assert task.findtext("t:Settings/t:ExecutionTimeLimit", namespaces=ns) == "PT0S"


def test_xml_special_characters_in_a_path_stay_data() -> None:
    command = service_command("tiny", Path("/l"), executable="/opt/R&D <x>/bin/python")
    task = ET.fromstring(scheduled_task(command, "me").encode("utf-16").decode("utf-16"))
    assert task.findtext(f"{{{TASK_NAMESPACE}}}Actions/{{{TASK_NAMESPACE}}}Exec/{{{TASK_NAMESPACE}}}Command") == \
        "/opt/R&D <x>/bin/python"


def _vcam(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vcam.cli", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=240)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the systemd entry is Linux's")
def test_service_install_status_uninstall_round_trip_in_a_private_config_folder(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XDG_CONFIG_HOME": str(tmp_path / "config"),
           "XDG_STATE_HOME": str(tmp_path / "state")}
    unit = entry_for("systemd", Path.home(), env).entry_path
    assert unit == tmp_path / "config" / "systemd" / "user" / "vcam.service"

    assert _vcam(["service", "status"], env).returncode == 3
    installed = _vcam(["service", "install", "--preset", "tiny", "--no-start"], env)
    assert unit.is_file() and "--preset tiny" in unit.read_text()
    assert f"service entry written: {unit}" in installed.stdout
    if installed.returncode != 0:  # no user session bus here: one line with the command that finishes the job
        [line] = [line for line in installed.stdout.splitlines() if "failed" in line]
        assert "systemctl --user enable --now vcam.service" in line and "Traceback" not in installed.stderr
    assert "service installed" in _vcam(["service", "status"], env).stdout

    other = _vcam(["service", "uninstall", "--only-for", str(tmp_path / "another-venv")], env)
    assert "runs another installation; left alone" in other.stdout and unit.is_file()
    removed = _vcam(["service", "uninstall"], env)
    assert removed.returncode == 0 and not unit.exists()


def test_installing_a_misspelt_preset_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XDG_CONFIG_HOME": str(tmp_path / "config")}
    result = _vcam(["service", "install", "--preset", "no-such-preset"], env)
    assert result.returncode == 2 and result.stderr.startswith("vcam: error:") and len(result.stderr.splitlines()) == 1
    assert not (tmp_path / "config" / "systemd").exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the systemd entry is Linux's")
def test_installed_without_preset_the_service_runs_the_users_default_preset_as_it_is_at_each_start(
        tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XDG_CONFIG_HOME": str(tmp_path / "config"),
           "XDG_STATE_HOME": str(tmp_path / "state")}
    assert _vcam(["presets", "default", "tiny"], env).returncode == 0
    installed = _vcam(["service", "install", "--no-start"], env)
    unit = (tmp_path / "config" / "systemd" / "user" / "vcam.service").read_text()
    [exec_start] = [line for line in unit.splitlines() if line.startswith("ExecStart=")]
    assert exec_start.endswith(" run --quiet") and "--preset" not in unit  # `vcam run` reads the default itself
    assert "Description=vcam real-time diffusion virtual camera (the default preset)" in unit
    assert "the service runs the default preset, now tiny" in installed.stdout
    assert _vcam(["service", "uninstall"], env).returncode == 0


def test_a_service_install_on_a_default_preset_deleted_since_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XDG_CONFIG_HOME": str(tmp_path / "config")}
    presets = tmp_path / "config" / "vcam" / "presets"
    presets.mkdir(parents=True)
    (presets / "mine.toml").write_text('[[prompts]]\nname = "a"\ntext = "a style"\n')
    assert _vcam(["presets", "default", "mine"], env).returncode == 0
    (presets / "mine.toml").unlink()
    result = _vcam(["service", "install"], env)
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1
    assert "your default preset 'mine'" in result.stderr and "`vcam presets default NAME`" in result.stderr
    assert not (tmp_path / "config" / "systemd").exists()
