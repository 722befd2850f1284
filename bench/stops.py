"""Stop a live `vcam run` while a long model call is in progress, many times in a row; every stop must exit 0.

    python bench/stops.py                       # 20 stops at 1024x1024, signals in turn (SIGINT, SIGTERM, SIGHUP)
    python bench/stops.py --runs 5 --when stylised --size 512

`--when loading` signals as soon as the output is up (the model thread is loading and warming up the model: tens of
seconds of torch calls at 1024x1024); `--when stylised` waits for the first stylised frame (the inference thread is
then inside a frame, many seconds long at 1024x1024 on a CPU). Prints one line per stop and a JSON summary.
The test suite checks each signal once the same way (tests/test_service_signals.py); this is the 20x run.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import selectors
import signal
import subprocess
import sys
import time

LONG_CALL_SIZE = 1024  # pixels: a frame of the tiny model takes seconds on a CPU, its warm-up tens of seconds
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def start_vcam(extra_env: dict[str, str], *args: str) -> subprocess.Popen:
    """A live `vcam run` of the tiny model on the synthetic source into an MJPEG stream (later options win)."""
    env = dict(os.environ, **extra_env)
    return subprocess.Popen([sys.executable, "-m", "vcam.cli", "run", "--model", "tiny", "--source", "synthetic",
                             "--sink", "mjpeg:0", "--no-hotkeys", "--quiet", *args],
                            stderr=subprocess.PIPE, text=True, env=env)


def wait_for_line(process: subprocess.Popen, text: str, timeout: float = 600.0) -> list[str]:
    """Read stderr until a line contains `text`; kill the process and fail if it never comes."""
    lines: list[str] = []
    selector = selectors.DefaultSelector()
    selector.register(process.stderr, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if selector.select(timeout=0.5):
            line = process.stderr.readline()
            if not line:
                break
            lines.append(line)
            if text in line:
                return lines
    process.kill()
    raise AssertionError(f"{text!r} never appeared: {''.join(lines)}")


def one_stop(sig: signal.Signals, size: int, when: str) -> dict:
    process = start_vcam({"DISPLAY": ""}, "--no-tray", "--width", str(size), "--height", str(size))
    wait_for_line(process, "output: mjpeg" if when == "loading" else "first stylised frame", timeout=600)
    start = time.monotonic()
    process.send_signal(sig)
    rest = process.communicate(timeout=60)[1]
    released = re.search(r"released ([0-9.]+) s after the stop request", rest)
    return {
        "signal": sig.name,
        "exit_code": process.returncode,
        "released_s": float(released.group(1)) if released else None,
        "exit_s": round(time.monotonic() - start, 2),
        "abandoned_call": "without waiting for the model call" in rest,
        "aborted": "terminate called" in rest,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--size", type=int, default=LONG_CALL_SIZE, help="model width and height")
    parser.add_argument("--when", choices=("loading", "stylised"), default="loading")
    args = parser.parse_args()
    results = []
    for run in range(args.runs):
        result = one_stop(SIGNALS[run % len(SIGNALS)], args.size, args.when)
        results.append(result)
        print(json.dumps(result), file=sys.stderr, flush=True)
    summary = {
        "runs": len(results),
        "exit_0": sum(r["exit_code"] == 0 for r in results),
        "released_max_s": max((r["released_s"] or 99.0) for r in results),
        "exit_max_s": max(r["exit_s"] for r in results),
        "abandoned_calls": sum(r["abandoned_call"] for r in results),
    }
    print(json.dumps(summary))
    return 0 if summary["exit_0"] == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
