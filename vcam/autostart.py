"""The background-service entries `vcam service install` writes: a systemd user unit (Linux), a LaunchAgent
(macOS) and a Task Scheduler task (Windows), each starting `vcam run --quiet` with the tray at log-in: with
`--preset NAME` when one was given at install time, else on the user's default preset as it is at each start.

Pure text: no file is written and no command run here (that is `vcam.autostart_cli`), so each platform's entry is
generated and checked on any machine. Every entry restarts vcam when it fails (a crash, a non-zero exit) and not
when it stops cleanly: vcam exits 0 on SIGTERM (systemd's and launchd's stop), after releasing the camera and the
virtual camera (see `vcam.stop_signals`).
"""
from __future__ import annotations

import os
import plistlib
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

SERVICE_NAME = "vcam"
SERVICE_LOG_NAME = "service.log"  # launchd's stdout/stderr file, beside vcam's own log
LAUNCHD_LABEL = "io.github.vcam"
RESTART_DELAY_S = 3
# vcam is gone about 6 s after SIGTERM at worst (2 s release, 1 s controls, 3 s model call, torch teardown); the
# margin covers a loaded machine. Only past it does the service manager kill it (and call the stop a failure).
STOP_TIMEOUT_S = 20
TASK_NAMESPACE = "http://schemas.microsoft.com/windows/2004/02/mit/task"


@dataclass(frozen=True)
class ServiceCommand:
    """What the service runs: the installed `vcam` (or `python -m vcam.cli`) with `run [--preset NAME] --quiet`."""

    argv: tuple[str, ...]
    log_file: Path  # where launchd sends stdout/stderr (systemd: the journal; Windows: vcam's own log only)

    @property
    def preset(self) -> str | None:
        """The preset pinned at install time; None: the user's default preset when the service starts."""
        return self.argv[self.argv.index("--preset") + 1] if "--preset" in self.argv else None

    def describe_preset(self) -> str:
        return f"preset {self.preset}" if self.preset else "the default preset"


def service_command(preset: str | None, log_dir: Path, executable: str = sys.executable) -> ServiceCommand:
    """The command for `preset` (None: no --preset, so each start reads the user's default preset), through the
    `vcam` launcher beside `executable` when pip installed one."""
    scripts = Path(executable).parent
    launcher = scripts / ("vcam.exe" if sys.platform == "win32" else "vcam")
    prefix = (str(launcher),) if launcher.is_file() else (executable, "-m", "vcam.cli")
    pinned = ("--preset", preset) if preset is not None else ()
    return ServiceCommand((*prefix, "run", *pinned, "--quiet"), log_dir / SERVICE_LOG_NAME)


def _systemd_word(word: str) -> str:
    """One ExecStart word: `%` doubled (specifier), quoted with `\\` and `"` escaped when it holds spaces or quotes
    (systemd.service(5), "Command lines")."""
    word = word.replace("%", "%%")
    if word and not any(c in word for c in ' \t"\'\\;$'):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"').replace("$", "$$") + '"'


def systemd_unit(command: ServiceCommand) -> str:
    """A systemd user unit (`~/.config/systemd/user/vcam.service`).

    Bound to the graphical session (the tray needs the desktop's DISPLAY, which the session imports into the user
    manager). KillMode=mixed sends SIGTERM to vcam only (it stops its own helper processes); Restart=on-failure
    restarts after a crash or non-zero exit, never after the clean exit 0 of a stop.
    """
    exec_start = " ".join(_systemd_word(word) for word in command.argv)
    return f"""[Unit]
Description=vcam real-time diffusion virtual camera ({command.describe_preset()})
After=graphical-session.target
PartOf=graphical-session.target

[Service]
Type=exec
ExecStart={exec_start}
Restart=on-failure
RestartSec={RESTART_DELAY_S}
KillMode=mixed
KillSignal=SIGTERM
TimeoutStopSec={STOP_TIMEOUT_S}

[Install]
WantedBy=graphical-session.target
"""


def launch_agent(command: ServiceCommand) -> bytes:
    """A LaunchAgent plist (`~/Library/LaunchAgents/io.github.vcam.plist`), as launchd.plist(5) reads it.

    KeepAlive/SuccessfulExit=false restarts vcam when it exits non-zero (or crashes), not after a clean stop;
    ProcessType=Interactive keeps it from being throttled like a background daemon (it serves a live camera).
    """
    agent = {
        "Label": LAUNCHD_LABEL,
        "ProgramArguments": list(command.argv),
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},
        "ThrottleInterval": RESTART_DELAY_S,
        "ExitTimeOut": STOP_TIMEOUT_S,
        "ProcessType": "Interactive",
        "StandardOutPath": str(command.log_file),
        "StandardErrorPath": str(command.log_file),
    }
    return plistlib.dumps(agent)


def scheduled_task(command: ServiceCommand, user: str) -> str:
    """A Task Scheduler task (registered with `schtasks /Create /XML`): at `user`'s log-on, in the interactive
    session (the tray needs the desktop), restarted every minute after a failure (the shortest interval Task
    Scheduler allows), never stopped for running long or on battery."""
    program, *arguments = command.argv
    return f"""<?xml version="1.0" encoding="UTF-16"?>
<Task version="1.2" xmlns="{TASK_NAMESPACE}">
  <RegistrationInfo>
    <Description>vcam real-time diffusion virtual camera ({escape(command.describe_preset())})</Description>
  </RegistrationInfo>
  <Triggers>
    <LogonTrigger>
      <Enabled>true</Enabled>
      <UserId>{escape(user)}</UserId>
    </LogonTrigger>
  </Triggers>
  <Principals>
    <Principal id="Author">
      <UserId>{escape(user)}</UserId>
      <LogonType>InteractiveToken</LogonType>
      <RunLevel>LeastPrivilege</RunLevel>
    </Principal>
  </Principals>
  <Settings>
    <MultipleInstancesPolicy>IgnoreNew</MultipleInstancesPolicy>
    <DisallowStartIfOnBatteries>false</DisallowStartIfOnBatteries>
    <StopIfGoingOnBatteries>false</StopIfGoingOnBatteries>
    <ExecutionTimeLimit>PT0S</ExecutionTimeLimit>
    <RestartOnFailure>
      <Interval>PT1M</Interval>
      <Count>999</Count>
    </RestartOnFailure>
    <Enabled>true</Enabled>
  </Settings>
  <Actions Context="Author">
    <Exec>
      <Command>{escape(program)}</Command>
      <Arguments>{escape(subprocess.list2cmdline(arguments))}</Arguments>
    </Exec>
  </Actions>
</Task>
"""


@dataclass(frozen=True)
class Platform:
    """Where one platform keeps the entry, and its text."""

    name: str  # "systemd", "launchd", "taskscheduler"
    entry_path: Path


def entry_for(kind: str, home: Path, environ: os._Environ | dict = os.environ) -> Platform:
    """Where the entry of `kind` lives for the user whose home is `home` (systemd honours XDG_CONFIG_HOME)."""
    if kind == "systemd":
        config = Path(environ.get("XDG_CONFIG_HOME") or home / ".config")
        return Platform(kind, config / "systemd" / "user" / f"{SERVICE_NAME}.service")
    if kind == "launchd":
        return Platform(kind, home / "Library" / "LaunchAgents" / f"{LAUNCHD_LABEL}.plist")
    # Task Scheduler keeps the task itself; this copy of its XML is what `schtasks /Create /XML` registered.
    local = Path(environ.get("LOCALAPPDATA") or home / "AppData" / "Local")
    return Platform(kind, local / "vcam" / f"{SERVICE_NAME}-task.xml")


def platform_kind(system: str = sys.platform) -> str:
    """The service manager of this OS: systemd on Linux, launchd on macOS, Task Scheduler on Windows."""
    if system.startswith("linux"):
        return "systemd"
    if system == "darwin":
        return "launchd"
    if system == "win32":
        return "taskscheduler"
    raise OSError(f"no service manager support for {system}; start `vcam run` from your session's autostart")


def entry_text(kind: str, command: ServiceCommand, user: str) -> bytes:
    """The bytes of the entry of `kind` (UTF-16 for Task Scheduler, whose XML declares it)."""
    if kind == "systemd":
        return systemd_unit(command).encode()
    if kind == "launchd":
        return launch_agent(command)
    return scheduled_task(command, user).encode("utf-16")
