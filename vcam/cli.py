"""The `vcam` command: run, bench, demo, presets, doctor, service, models.

Every error a user can cause (a bad option, a missing model, a camera that will not open, a broken preset) is an
exception class with a one-line message that names the fix; `main` prints it as `vcam: error: ...` and exits 2,
never with a traceback.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, NoReturn

from vcam.allocator import reuse_freed_memory
from vcam.autostart_cli import add_service_parser, run_service_action
from vcam.models_cli import add_models_parser, run_models_action
from vcam.options import NOTICES, add_run_options, add_stream_options
from vcam.presets_cli import add_presets_parser, run_presets_action

if TYPE_CHECKING:
    from vcam.default_preset import DefaultPreset


USER_ERRORS = (  # the exception classes whose message is meant for the user, by module
    ("core.config", "ConfigError"), ("engines.base", "ModelError"), ("engines.base", "EngineUnavailableError"),
    ("vcam.presets", "PresetError"), ("vcam.settings", "SettingsError"), ("vcam.sinks", "SinkError"),
    ("vcam.sources", "SourceError"), ("vcam.commands", "CommandError"), ("vcam.demo", "DemoError"),
)


def _user_errors() -> tuple[type[BaseException], ...]:
    """The user-error classes among the modules loaded so far: an error can only be raised by a loaded module, and
    importing the others (vcam.demo loads torch) would add seconds to a one-line answer."""
    return tuple(getattr(sys.modules[module], name) for module, name in USER_ERRORS if module in sys.modules)


class OneLineParser(argparse.ArgumentParser):
    """An option mistake is one line naming the fix, like every other mistake, not the whole usage text (argparse's
    default). Subcommand parsers inherit the class (argparse makes them with `type(parser)`)."""

    def _exit_one_line(self, message: str, help_of: str) -> NoReturn:
        self.exit(2, f"vcam: error: {message} (see {help_of} --help)\n")

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("vcam").strip()  # "" for the top-level parser: no "vcam: error: vcam:"
        self._exit_one_line(f"{command}: {message}" if command else message, self.prog)

    def parse_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                   namespace: argparse.Namespace | None = None) -> argparse.Namespace:
        """An unknown option is argparse's top-level error, which would point at `vcam --help`; it points at the
        subcommand's help instead, where the options the user meant are listed."""
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            command = getattr(parsed, "command", None)
            self._exit_one_line(f"unrecognized arguments: {' '.join(extras)}",
                                f"{self.prog} {command}" if command else self.prog)
        return parsed


def installed_version() -> str:
    """The installed package's version (what pip installed), or "unknown" when run from a bare checkout."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vcam")
    except PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="vcam", description="Real-time diffusion virtual camera.")
    parser.add_argument("--version", action="version", version=f"vcam {installed_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="restyle the camera and publish it as a virtual camera")
    add_stream_options(run)
    g = run.add_argument_group("service")
    g.add_argument("--no-tray", action="store_true", help="run headless, without the tray icon")
    g.add_argument("--no-hotkeys", action="store_true", help="do not register global hotkeys")
    add_run_options(run, "service", ("obs", "osc"))  # --obs, --osc
    g.add_argument("--overlay", action="store_true", help="draw fps, skip rate and prompt on the preview window")
    g.add_argument("--quiet", action="store_true", help="no status line on the terminal")

    bench = sub.add_parser("bench", help="measure fps, efficiency, latency and memory on the current settings")
    add_stream_options(bench)
    g = bench.add_argument_group("report")
    g.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    g.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    g.add_argument("--no-model-only", action="store_true",
                   help="do not time the model alone (no efficiency): a slow model's bench in a third of the time")

    demo = sub.add_parser(
        "demo", help="restyle the sample photo: vcam-demo.mp4 (input | output) and vcam-demo.png",
        description="Restyle the sample photo (sample:chelsea) with the tiny model and write vcam-demo.mp4 (input | "
                    "output, four styles in turn) and vcam-demo.png (a contact sheet) into --out. It runs the tiny "
                    "preset's settings (256x256, one step) for 96 frames unless the options say otherwise; the "
                    "defaults the options below show are `vcam run`'s.")
    add_stream_options(demo)
    demo.add_argument("--out", default=".", help="folder for vcam-demo.mp4 and vcam-demo.png, which are replaced "
                                                 "if there (default: here)")

    add_presets_parser(sub)
    doctor = sub.add_parser("doctor", help="check this machine for a preset: OK / WARN / FAIL per check, with the fix")
    doctor.add_argument("--preset", metavar="NAME|FILE",
                        help="the preset to check for (default: your default preset, see `vcam presets default`)")
    doctor.add_argument("--json", action="store_true", help="print one JSON object instead of lines")
    add_service_parser(sub)
    add_models_parser(sub)
    return parser


def _say(notice: str) -> None:
    """A note on how this run differs from the plain one (an old spelling, still accepted for one release; the
    user's default preset): each said once, as one line, before the run starts."""
    print(f"vcam: note: {notice}", file=sys.stderr)


def _cmd_bench(args: argparse.Namespace) -> int:
    from vcam.settings import resolve_settings

    settings = resolve_settings(args, default_preset="tiny", notify=_say)  # before torch loads: mistakes answer fast
    from vcam.bench import run_bench

    result = run_bench(settings, progress=not args.no_progress, model_only=not args.no_model_only, owns_process=True)
    if args.json:
        print(result.to_json())
    else:
        width = max(map(len, result.fields))  # `num_inference_steps` is wider than the rest
        for key, value in result.fields.items():
            if value is not None:  # e.g. num_inference_steps, which only a solver scheduler has (--json keeps it)
                print(f"{key:<{width}} {value}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from vcam.fallbacks import settle_model
    from vcam.settings import resolve_settings

    # `--model tiny` without a preset means the offline demo: the tiny preset's resolution and steps suit it.
    default_preset = "tiny"
    if args.preset is None and getattr(args, "model.model") != "tiny":
        default_preset = _default_preset().name
    settings = resolve_settings(args, default_preset=default_preset, notify=_say)  # before torch loads (see bench)
    if args.preset is None and default_preset == "tiny":
        _say_tiny_runs_its_own_preset()
    settings = settle_model(settings, notify=logging.getLogger("vcam").info)  # as the service would say it
    from vcam.service import Service, ServiceOptions

    options = ServiceOptions(
        tray=not args.no_tray,
        hotkeys=not args.no_hotkeys,
        overlay=args.overlay,
        status_line=not args.quiet,
        owns_process=True,
    )
    return Service(settings, options).run()


def _say_tiny_runs_its_own_preset() -> None:
    """`--model tiny` without a preset runs the tiny preset, not the default one: a run unlike a plain `vcam run`
    says why, once (after the settings checked out, so a mistake stays one line)."""
    from vcam.default_preset import default_preset

    usual = default_preset().name
    if usual != "tiny":
        _say(f"--model tiny without --preset runs the tiny preset (its size, steps, prompts and sample source suit "
             f"the tiny model) instead of {usual}; `--preset {usual} --model tiny` combines them")


def _default_preset() -> DefaultPreset:
    """The user's default preset (checked to load), said in one line when it is the user's own choice: it is why
    this run differs from what the README says a plain `vcam run` does."""
    from vcam.default_preset import default_preset

    chosen = default_preset()
    if chosen.is_users:
        _say(f"preset {chosen.name!r}: {chosen.origin()}")
    return chosen


def _cmd_doctor(args: argparse.Namespace) -> int:
    from vcam.doctor import run_doctor

    return run_doctor(args.preset or _default_preset().name, as_json=args.json)


def quiet_libraries() -> None:
    """Set before the libraries are imported: OpenCV's camera probing warnings and the Hugging Face progress bars
    and config notices are noise on a terminal whose one-line messages are meant for the user (the user can
    still override each variable)."""
    for name, value in (
        ("OPENCV_LOG_LEVEL", "ERROR"),
        ("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
        ("TRANSFORMERS_VERBOSITY", "error"),
        ("DIFFUSERS_VERBOSITY", "error"),
        ("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1"),
    ):
        os.environ.setdefault(name, value)


def wait_without_spinning() -> None:
    """Set before torch loads: OpenMP threads that wait at a barrier sleep instead of spinning
    (OMP_WAIT_POLICY=PASSIVE). vcam shares the machine with the apps it feeds (a video call, OBS). With spinning
    waits, on a 2-core machine that something else kept busy, a live run made 0.5 stylised frames a second where
    `vcam bench` made 3.1 (torch's two OpenMP threads spinning on the core the other one needed, the capture and
    output threads in between); with passive waits it made 3.3. The user's own setting wins."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main(argv: list[str] | None = None) -> int:
    quiet_libraries()
    wait_without_spinning()
    reuse_freed_memory()  # before any thread allocates (vcam.allocator)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    for notice in dict.fromkeys(getattr(args, NOTICES, ())):
        _say(notice)
    from vcam.logs import log_traceback, setup_logging

    log_path = setup_logging()
    try:
        if args.command == "presets":
            return run_presets_action(args)
        if args.command == "doctor":
            return _cmd_doctor(args)
        if args.command == "service":
            return run_service_action(args)
        if args.command == "models":
            return run_models_action(args)
        if args.command == "bench":
            return _cmd_bench(args)
        if args.command == "demo":
            from vcam.demo import demo_command

            return demo_command(args)
        return _cmd_run(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader left (`vcam models list | head -1`): not an error. Python's recipe: point stdout at devnull so
        # the interpreter's final flush does not raise again, and end as a piped tool does.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a tool its pipe closed on
    except Exception as error:  # noqa: BLE001 - one line on the terminal, the traceback in the log file
        log_traceback(error, f"vcam {args.command} ended with an error")
        if isinstance(error, _user_errors()):
            print(f"vcam: error: {error}", file=sys.stderr)
            return 2
        # Not a mistake of the user's: a bug. The terminal gets one line; the traceback is in the log to report.
        print(f"vcam: error: {type(error).__name__}: {error} (a bug: please report it with the traceback in "
              f"{log_path})", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
