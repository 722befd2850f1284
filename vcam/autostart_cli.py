"""`vcam service install|uninstall|status|logs`: the background service, through the platform's own manager.

The entry is written first, then the manager is told (`systemctl --user`, `launchctl`, `schtasks`). Where the
manager cannot be reached (no user session bus over SSH, a container) the entry stays written and one line says
the command that enables it; nothing is half-done silently.
"""
from __future__ import annotations

import argparse
import getpass
import os
import shutil
import subprocess
import sys
from pathlib import Path

from vcam.autostart import LAUNCHD_LABEL, SERVICE_LOG_NAME, SERVICE_NAME, entry_for, entry_text, platform_kind, service_command

LOG_LINES = 40


def add_service_parser(sub: argparse._SubParsersAction) -> None:
    service = sub.add_parser("service", help="run vcam in the background at log-in: install | uninstall | status | logs")
    actions = service.add_subparsers(dest="service_action", metavar="ACTION", required=True)
    install = actions.add_parser("install", help="start vcam with the tray at every log-in, restarted on failure")
    install.add_argument("--preset", metavar="NAME|FILE",
                         help="the preset it always runs (default: your default preset at each start, see "
                              "`vcam presets default`)")
    install.add_argument("--no-start", action="store_true", help="write and enable the entry, but do not start it now")
    uninstall = actions.add_parser("uninstall", help="stop the service and remove its entry")
    uninstall.add_argument("--only-for", metavar="PREFIX", help=argparse.SUPPRESS)  # install.sh --uninstall: ours only
    actions.add_parser("status", help="whether the entry is installed, what it runs, and whether it runs now")
    logs = actions.add_parser("logs", help="the end of vcam's log (the service writes there too)")
    logs.add_argument("-n", "--lines", type=int, default=LOG_LINES, help=f"how many lines ({LOG_LINES})")


def _run(argv: list[str]) -> tuple[bool, str]:
    """Run a service-manager command: (succeeded, its first error line)."""
    if shutil.which(argv[0]) is None:
        return False, f"{argv[0]} is not installed"
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return False, f"{argv[0]} did not answer within 60 s"
    lines = (result.stderr or result.stdout).strip().splitlines()
    return result.returncode == 0, (lines[0] if lines else f"exit status {result.returncode}")


def _manager_commands(kind: str, entry: Path, start: bool) -> list[list[str]]:
    if kind == "systemd":
        return [["systemctl", "--user", "daemon-reload"],
                ["systemctl", "--user", "enable", *(["--now"] if start else []), f"{SERVICE_NAME}.service"]]
    if kind == "launchd":
        return [["launchctl", "bootstrap", f"gui/{os.getuid()}", str(entry)]]
    return [["schtasks", "/Create", "/TN", SERVICE_NAME, "/XML", str(entry), "/F"],
            *([["schtasks", "/Run", "/TN", SERVICE_NAME]] if start else [])]


def _stop_commands(kind: str) -> list[list[str]]:
    if kind == "systemd":
        return [["systemctl", "--user", "disable", "--now", f"{SERVICE_NAME}.service"]]
    if kind == "launchd":
        return [["launchctl", "bootout", f"gui/{os.getuid()}/{LAUNCHD_LABEL}"]]
    return [["schtasks", "/End", "/TN", SERVICE_NAME], ["schtasks", "/Delete", "/TN", SERVICE_NAME, "/F"]]


def _tell_manager(commands: list[list[str]]) -> str:
    """Run `commands` in order; "" when all succeeded, else the failing command and its reason."""
    for argv in commands:
        ok, reason = _run(argv)
        if not ok:
            return f"`{' '.join(argv)}` failed ({reason})"
    return ""


def install(preset: str | None, start: bool) -> int:
    """Write and enable the entry; without `preset` it runs the user's default preset as it is at each start."""
    from vcam.default_preset import default_preset
    from vcam.logs import log_dir
    from vcam.presets import load_preset

    # A misspelt preset (or a default preset deleted since it was chosen) is refused now, not at the next log-in.
    if preset is None:
        print(f"vcam: the service runs the default preset, now {default_preset().name} "
              "(`vcam presets default NAME` changes it from the service's next start)")
    else:
        load_preset(preset)
    kind = platform_kind()
    place = entry_for(kind, Path.home())
    command = service_command(preset, log_dir())
    place.entry_path.parent.mkdir(parents=True, exist_ok=True)
    place.entry_path.write_bytes(entry_text(kind, command, getpass.getuser()))
    print(f"vcam: service entry written: {place.entry_path} (runs {' '.join(command.argv)})")
    problem = _tell_manager(_manager_commands(kind, place.entry_path, start))
    if problem:
        enable = " && ".join(" ".join(argv) for argv in _manager_commands(kind, place.entry_path, True))
        print(f"vcam: {problem}; the entry is in place: run `{enable}` in your desktop session")
        return 1
    print(f"vcam: service {'started and ' if start else ''}enabled at log-in; stop it with "
          f"{'`vcam service uninstall`' if kind == 'taskscheduler' else _stop_hint(kind)}")
    return 0


def _stop_hint(kind: str) -> str:
    return "`systemctl --user stop vcam`" if kind == "systemd" else f"`launchctl kill TERM gui/{os.getuid()}/{LAUNCHD_LABEL}`"


def _entry_runs_from(entry: Path, prefix: str) -> bool:
    """Whether the entry's command lies under `prefix` (the entry text names the executable's path)."""
    text = entry.read_bytes()
    for encoding in ("utf-16", "utf-8"):
        try:
            if str(Path(prefix).resolve()) in text.decode(encoding) or prefix in text.decode(encoding):
                return True
        except UnicodeDecodeError:
            continue
    return False


def uninstall(only_for: str | None) -> int:
    kind = platform_kind()
    place = entry_for(kind, Path.home())
    if not place.entry_path.exists():
        print("vcam: no service entry is installed")
        return 0
    if only_for and not _entry_runs_from(place.entry_path, only_for):
        print(f"vcam: the service entry {place.entry_path} runs another installation; left alone")
        return 0
    problem = _tell_manager(_stop_commands(kind))
    place.entry_path.unlink()
    if kind == "systemd":
        _run(["systemctl", "--user", "daemon-reload"])
    note = f" ({problem}: nothing was running, or stop it in your desktop session)" if problem else ""
    print(f"vcam: service removed: {place.entry_path}{note}")
    return 0


def status() -> int:
    kind = platform_kind()
    place = entry_for(kind, Path.home())
    if not place.entry_path.exists():
        print(f"vcam: service not installed (would be {place.entry_path}); `vcam service install` adds it")
        return 3
    if kind == "systemd":
        ok, state = _run(["systemctl", "--user", "is-active", f"{SERVICE_NAME}.service"])
    elif kind == "launchd":
        ok, state = _run(["launchctl", "print", f"gui/{os.getuid()}/{LAUNCHD_LABEL}"])
        state = "loaded" if ok else f"not loaded ({state})"
    else:
        ok, state = _run(["schtasks", "/Query", "/TN", SERVICE_NAME])
        state = "registered" if ok else f"not registered ({state})"
    print(f"vcam: service installed: {place.entry_path}; state: {state}")
    return 0


def logs(lines: int) -> int:
    from vcam.logs import log_dir

    files = [log_dir() / "vcam.log", log_dir() / SERVICE_LOG_NAME]
    shown = False
    for path in files:
        if path.is_file():
            print(f"==> {path} <==")
            print("\n".join(path.read_text(errors="replace").splitlines()[-lines:]))
            shown = True
    if sys.platform.startswith("linux"):
        print(f"(the service's terminal output: journalctl --user -u {SERVICE_NAME} -n {lines})")
    if not shown:
        print(f"vcam: no log yet in {log_dir()}")
    return 0


def run_service_action(args: argparse.Namespace) -> int:
    """Dispatch `vcam service ACTION`."""
    if args.service_action == "install":
        return install(args.preset, start=not args.no_start)
    if args.service_action == "uninstall":
        return uninstall(args.only_for)
    if args.service_action == "status":
        return status()
    return logs(args.lines)
