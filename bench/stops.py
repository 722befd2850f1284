"""Stop a live `vcam run` while a long model call is in progress, many times in a row; every stop must exit 0.

    python bench/stops.py                       # 20 stops at 1024x1024: SIGINT, SIGTERM, SIGHUP, quit in turn
    python bench/stops.py --runs 5 --when stylised --size 512

`--when loading` stops as soon as the output is up (the model thread is loading and warming up the model: tens of
seconds of torch calls at 1024x1024); `--when stylised` waits for the first stylised frame (the inference thread is
then inside the next frame's model call, many seconds long at 1024x1024 on a CPU; the service's stop line says
how far into it the stop landed). The quit command is sent over OSC. Prints one line per stop and a JSON summary.
The test suite makes 20 such stops at a smaller size (tests/test_service_signals.py).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/stops.py`: its bench.soak import

LONG_CALL_SIZE = 1024  # pixels: a frame of the tiny model takes seconds on a CPU, its warm-up tens of seconds
QUIT = "quit command"  # a way to stop that is not a signal: /vcam/quit over OSC
STOPS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, QUIT)


class VcamRun:
    """A `vcam run` child process whose stderr is read line by line on a thread of its own, as it comes.

    (A select() on the pipe followed by readline() misses lines: readline reads ahead into Python's buffer, and
    select() only sees the pipe. Two lines written together, such as "model ready" and "first stylised frame", then
    leave the second waiting in the buffer until the process writes again, which with --quiet may be never.)
    """

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.process = subprocess.Popen(args, stderr=subprocess.PIPE, text=True, env=env)
        self._lines: list[str] = []
        self._handed_out = 0  # lines already returned by wait_for_line / finish
        self._ended = False
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, name="vcam-stderr", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stderr:
            with self._changed:
                self._lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._ended = True
            self._changed.notify_all()

    def wait_for_line(self, text: str, timeout: float = 600.0) -> list[str]:
        """The lines since the last call, up to the first one containing `text`; kill the process and fail if
        it never comes (or the process ends first)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for index in range(self._handed_out, len(self._lines)):
                    if text in self._lines[index]:
                        lines, self._handed_out = self._lines[self._handed_out:index + 1], index + 1
                        return lines
                left = deadline - time.monotonic()
                if self._ended or left <= 0:
                    break
                self._changed.wait(left)
            seen = "".join(self._lines)
        self.kill()
        raise AssertionError(f"{text!r} never appeared: {seen}")

    def send_signal(self, sig: int) -> None:
        self.process.send_signal(sig)

    def finish(self, timeout: float) -> str:
        """Wait for the process to exit by itself (killed and failed after `timeout` seconds); the rest of its
        stderr (the lines after the last wait_for_line)."""
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"still running {timeout:.0f} s after the stop: {''.join(self._lines)}") from None
        finally:
            if self.process.poll() is None:
                self.process.kill()
        self._reader.join(timeout=60)
        with self._changed:
            rest, self._handed_out = self._lines[self._handed_out:], len(self._lines)
        return "".join(rest)

    def poll(self) -> int | None:
        return self.process.poll()

    def kill(self) -> None:
        self.process.kill()

    @property
    def returncode(self) -> int | None:
        return self.process.returncode


def start_vcam(extra_env: dict[str, str], *args: str) -> VcamRun:
    """A live `vcam run` of the tiny model on the synthetic source into an MJPEG stream (later options win)."""
    env = dict(os.environ, **extra_env)
    return VcamRun([sys.executable, "-m", "vcam.cli", "run", "--model", "tiny", "--source", "synthetic",
                    "--sink", "mjpeg:0", "--no-hotkeys", "--quiet", *args], env)


def start_stoppable_vcam(stop: signal.Signals | str, preset_dir: Path, *args: str) -> tuple[VcamRun, int | None]:
    """`start_vcam` ready to be stopped by `stop`: for the quit command with OSC on at a free port (the shipped
    tiny preset with OSC switched on, written into `preset_dir`); the OSC port or None."""
    from bench.soak import free_port, write_preset

    if stop != QUIT:
        return start_vcam({"DISPLAY": ""}, "--no-tray", *args), None
    port = free_port(socket.SOCK_DGRAM)
    preset = write_preset(preset_dir, port)
    return start_vcam({"DISPLAY": ""}, "--no-tray", "--preset", str(preset), "--osc", *args), port


def send_stop(run: VcamRun, stop: signal.Signals | str, osc_port: int | None) -> None:
    if stop == QUIT:
        from pythonosc.udp_client import SimpleUDPClient

        SimpleUDPClient("127.0.0.1", osc_port).send_message("/vcam/quit", [])
    else:
        run.send_signal(stop)


def stop_name(stop: signal.Signals | str) -> str:
    """How the service names the stop in its "stop requested (...)" line."""
    return stop if isinstance(stop, str) else stop.name


def one_stop(stop: signal.Signals | str, size: int, when: str, exit_timeout: float = 120.0) -> dict:
    """Start a run at `size`x`size`, stop it `when` ("loading" or "stylised") the way `stop` says, and describe
    how it ended: exit status, release time, where the stop landed, how the model call in flight ended."""
    with tempfile.TemporaryDirectory(prefix="vcam-stops-") as preset_dir:
        run, osc_port = start_stoppable_vcam(stop, Path(preset_dir), "--width", str(size), "--height", str(size))
        run.wait_for_line("output: mjpeg" if when == "loading" else "first stylised frame")
        start = time.monotonic()
        send_stop(run, stop, osc_port)
        rest = run.finish(timeout=exit_timeout)
    released = re.search(r"released ([0-9.]+) s after the stop request", rest)
    into_call = re.search(r"stop requested \(.*?\) ([0-9.]+) s into a model call", rest)
    return {
        "stop": stop_name(stop),
        "exit_code": run.returncode,
        "released_s": float(released.group(1)) if released else None,
        "exit_s": round(time.monotonic() - start, 2),
        "into_model_call_s": float(into_call.group(1)) if into_call else None,
        "abandoned_call": "without waiting for the model call" in rest,
        "aborted": "terminate called" in rest,
        "traceback": "Traceback" in rest,
        "stderr": rest,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--size", type=int, default=LONG_CALL_SIZE, help="model width and height")
    parser.add_argument("--when", choices=("loading", "stylised"), default="loading")
    args = parser.parse_args()
    results = []
    for run in range(args.runs):
        result = one_stop(STOPS[run % len(STOPS)], args.size, args.when)
        result.pop("stderr")
        results.append(result)
        print(json.dumps(result), file=sys.stderr, flush=True)
    summary = {
        "runs": len(results),
        "exit_0": sum(r["exit_code"] == 0 for r in results),
        "released_max_s": max((r["released_s"] or 99.0) for r in results),
        "exit_max_s": max(r["exit_s"] for r in results),
        "stops_inside_a_model_call": sum(r["into_model_call_s"] is not None for r in results),
        "abandoned_calls": sum(r["abandoned_call"] for r in results),
    }
    print(json.dumps(summary))
    return 0 if summary["exit_0"] == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
