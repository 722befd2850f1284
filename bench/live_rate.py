"""A live `vcam run` against `vcam bench` on the same settings: does the product reach the rate the benchmark reports?

    python bench/live_rate.py                                   # tiny preset, 256x256, 3 pairs, 30 s live each
    python bench/live_rate.py --width 128 --height 128 --pairs 1 --seconds 5 --bench-frames 20   # a smoke run

Each pair runs both sides in fresh processes, alternating their order (A-B, B-A) so a steady drift of the machine's
speed cancels:
- bench: `vcam bench --json --no-model-only` on the synthetic source into the null sink; its `fps`.
- live: `vcam run` on the synthetic source (paced like a camera) into `mjpeg:0`, the output at the model's size;
  a real HTTP client reads the MJPEG stream from the start. From the run's "first stylised frame" line (said when
  the output writes the first frame the model made) for `--seconds`, every part whose JPEG differs from the one
  before is a new stylised frame; the live rate is those frames over the time they span, and the longest gap is
  the longest wait for a new frame in the window (its two ends included: a freeze right after the first stylised
  frame, or at the end, counts).
Both sides get the same preset, model, engine, threads, size, t_index_list and similarity filter (off unless
`--ssf`: every frame then goes through the model on both sides, so a new picture is a model call). The stream's
pacer sends at most `--output-fps` parts a second: keep it above the model's rate. Prints a line per pair (bench
fps, live fps, ratio live / bench, longest gap) and the median ratio and the longest gap overall; `--json` adds one
JSON object. The target (issue 12): the median ratio within 10 % of 1, and no gap much longer than a frame period.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.stops import VcamRun  # noqa: E402 - after the path, so the script runs from anywhere

ENV = {**os.environ, "PYTHONPATH": str(ROOT), "DISPLAY": ""}  # no display: no tray, no window


@dataclass(frozen=True)
class LiveRate:
    """What the HTTP client saw after the first stylised frame."""

    fps: float  # new frames over the time they span
    new_frames: int
    seconds: float  # the window after "first stylised frame"
    longest_gap: float  # seconds: the longest wait for a new frame in the window, its ends included


def shared_options(args: argparse.Namespace) -> list[str]:
    """The settings both sides get, so they run the same model the same way."""
    options = ["--preset", args.preset, "--model", args.model, "--engine", args.engine, "--device", "cpu",
               "--width", str(args.width), "--height", str(args.height), "--source", args.source,
               "--ssf" if args.ssf else "--no-ssf"]
    if args.t_index_list:
        options += ["--t-index-list", args.t_index_list]
    return options + (["--threads", str(args.threads)] if args.threads else [])


def bench_fps(args: argparse.Namespace) -> float:
    """`vcam bench`'s fps for the settings, in a fresh process."""
    command = [sys.executable, "-m", "vcam.cli", "bench", *shared_options(args), "--json", "--no-progress",
               "--no-model-only", "--sink", "null", "--frames", str(args.bench_frames)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=ENV)
    if done.returncode != 0:
        sys.exit(f"live_rate: vcam bench failed:\n{done.stderr[-3000:]}")
    return float(json.loads(done.stdout.strip().splitlines()[-1])["fps"])


class StreamWatcher:
    """Reads an MJPEG stream on a thread of its own and notes when each part differing from the one before came."""

    def __init__(self, url: str) -> None:
        self.changes: list[float] = []  # monotonic arrival times of new pictures
        self._stop = threading.Event()
        self._response = urllib.request.urlopen(url, timeout=60)
        self._thread = threading.Thread(target=self._read, name="stream-watcher", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        previous = b""
        try:
            while not self._stop.is_set():
                if self._response.readline() != b"--vcamframe\r\n":
                    return  # the stream ended (the run stopped)
                length = 0
                while (line := self._response.readline()) not in (b"\r\n", b""):
                    name, _, value = line.decode("ascii").partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                digest = hashlib.sha1(self._response.read(length)).digest()
                self._response.read(2)
                if digest != previous:
                    self.changes.append(time.monotonic())
                    previous = digest
        except OSError:
            return  # the server went away mid-part: the run is stopping

    def stop(self) -> None:
        self._stop.set()
        self._response.close()
        self._thread.join(timeout=10)


def live_rate(args: argparse.Namespace) -> LiveRate:
    """Run `vcam run` live into MJPEG, watch its stream for `args.seconds` after the first stylised frame, stop it."""
    command = [sys.executable, "-m", "vcam.cli", "run", *shared_options(args), "--sink", "mjpeg:0",
               "--output-size", f"{args.width}x{args.height}", "--output-fps", str(args.output_fps),
               "--no-tray", "--no-hotkeys", "--quiet"]
    run = VcamRun(command, ENV)
    try:
        said = "".join(run.wait_for_line("stream.mjpg", timeout=args.timeout))
        url = re.search(r"http://\S+", said.splitlines()[-1] if said else "")
        if url is None:
            raise SystemExit(f"live_rate: no stream address in {said!r}")
        watcher = StreamWatcher(url.group(0))
        run.wait_for_line("first stylised frame", timeout=args.timeout)
        first = time.monotonic()
        time.sleep(args.seconds)
        end = time.monotonic()
        watcher.stop()
        run.send_signal(signal.SIGINT)
        run.finish(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
    changes = [t for t in watcher.changes if first <= t <= end]
    edges = [first, *changes, end]
    longest = max(b - a for a, b in zip(edges, edges[1:]))
    fps = (len(changes) - 1) / (changes[-1] - changes[0]) if len(changes) >= 2 and changes[-1] > changes[0] else 0.0
    return LiveRate(fps=fps, new_frames=len(changes), seconds=end - first, longest_gap=longest)


def compare(args: argparse.Namespace) -> dict:
    """The pairs, alternating which side runs first; each pair's ratio live / bench, their median, the longest gap."""
    pairs = []
    for index in range(args.pairs):
        order = ("bench", "live") if index % 2 == 0 else ("live", "bench")
        results: dict = {}
        for side in order:
            results[side] = bench_fps(args) if side == "bench" else live_rate(args)
        bench, live = results["bench"], results["live"]
        ratio = live.fps / bench if bench > 0 else float("nan")
        pairs.append({"bench_fps": round(bench, 3), "live": asdict(live), "ratio": round(ratio, 3)})
        print(f"pair {index + 1}: bench {bench:.3g} fps, live {live.fps:.3g} fps ({live.new_frames} new frames in "
              f"{live.seconds:.1f} s), ratio {ratio:.3f}, longest gap {live.longest_gap:.2f} s",
              file=sys.stderr, flush=True)
    median = statistics.median(pair["ratio"] for pair in pairs)
    longest = max(pair["live"]["longest_gap"] for pair in pairs)
    print(f"median ratio (live / bench): {median:.3f} over {len(pairs)} pairs; longest gap {longest:.2f} s",
          file=sys.stderr)
    return {"settings": vars(args), "pairs": pairs, "median_ratio": round(median, 3), "longest_gap": round(longest, 3)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny", help="the preset both sides start from")
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--engine", default="torch")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for the model (0: vcam's default)")
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--t-index-list", default="", help="as vcam takes it ('' : the preset's)")
    parser.add_argument("--source", default="synthetic")
    parser.add_argument("--ssf", action="store_true", help="the similarity filter on, on both sides")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=30.0, help="live: how long to watch after the first frame")
    parser.add_argument("--bench-frames", type=int, default=100, help="bench: timed frames per run")
    parser.add_argument("--output-fps", type=float, default=60.0, help="live: the stream's rate cap")
    parser.add_argument("--timeout", type=float, default=900.0, help="live: the longest wait for start-up")
    parser.add_argument("--json", action="store_true", help="also print the results as one JSON object")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    report = compare(args)
    if args.json:
        print(json.dumps(report))


if __name__ == "__main__":
    main()
