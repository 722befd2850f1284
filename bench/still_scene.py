"""Still scenes cost less: CPU seconds per output frame with the similarity filter on and off, vcam and reference.

    python bench/still_scene.py --model sd21-shape --vae taesd-shape --width 512 --height 512 --t-index-list 25

On the still sample photo (`sample:NAME:static`) each side runs with its filter on and off, alternated, every run a
fresh process (`bench/reference.py` says how the two sides are made alike). CPU time is the whole process's (user +
system, every thread) over the timed frames, the power proxy on a machine without a power meter; per output frame,
it is also CPU seconds per output second at any fixed output rate, so `cut = off / on` is the compute a still scene
saves. A filter that cuts compute by freezing a moving picture would be no use, so the same filter (same settings
and seed) is then run over the moving sample's frames, and the longest run of skipped frames and the share of
frames processed are reported: a skipped frame repeats the last output, so a long run is a visible freeze.
The filter decides on the input alone, which is why the moving check needs no model.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/still_scene.py` from anywhere

from bench.reference import (  # noqa: E402
    build_parser, ensure_reference_venv, default_venv, reference_command,
    resolve_folders, run_json, vcam_command, write_frames)

CAMERA_FPS = 30.0  # the rate a webcam delivers: how long a run of repeated frames is on screen


def cpu_per_frame(result: dict) -> float:
    return result["cpu_seconds"] / result["frames"]


def moving_scene_skips(args: argparse.Namespace, frames: int) -> dict:
    """The filter vcam runs, on `frames` frames of the moving sample as the stream sees them; no model involved."""
    from core.similarity import SimilarityFilter, SimilarityFilterConfig
    from vcam.processor import frames_to_tensor
    from vcam.sources import SourceConfig, open_source

    moving = args.source.replace(":static", "")
    source = open_source(moving, SourceConfig(width=args.width, height=args.height, live=False))
    similarity = SimilarityFilter(SimilarityFilterConfig(enabled=True, threshold=args.ssf_threshold,
                                                         max_skip=args.ssf_max_skip))
    longest = 0
    try:
        for _ in range(frames):
            images = frames_to_tensor([source.read()], args.width, args.height, "crop")  # (1, 3, H, W) in [0, 1]
            similarity.should_skip(images * 2 - 1)  # centred, as core.stream passes them
            longest = max(longest, similarity.skip_streak)
    finally:
        source.close()
    return {"source": moving, "frames": frames, "processed_share": round(similarity.processed / frames, 3),
            "longest_skip_run": longest, "longest_freeze_ms": round(1000 * longest / CAMERA_FPS, 1)}


def main() -> None:
    parser = build_parser(__doc__.splitlines()[0])
    parser.set_defaults(source="sample:coffee:static", pairs=1)
    parser.add_argument("--frames-on", type=int, default=22, help="timed frames with the filter on (2 skip cycles)")
    parser.add_argument("--frames-off", type=int, default=4, help="timed frames with the filter off")
    parser.add_argument("--moving-frames", type=int, default=300, help="moving-sample frames for the freeze check")
    parser.add_argument("--no-reference", action="store_true", help="vcam only")
    args = parser.parse_args()
    if "static" not in args.source:
        sys.exit("still_scene: --source must be a still one, e.g. sample:coffee:static")
    python = None if args.no_reference else ensure_reference_venv(args.venv or default_venv())
    model_dir, vae_dir = resolve_folders(args.model, args.vae)
    runs: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="vcam-still-") as tmp:
        commands = {}
        for ssf, frames in ((True, args.frames_on), (False, args.frames_off)):
            side_args = argparse.Namespace(**{**vars(args), "ssf": ssf, "frames": frames})
            label = "on" if ssf else "off"
            commands[f"vcam {label}"] = vcam_command(side_args)
            if python is not None:
                frames_file = Path(tmp) / f"frames-{frames}.npy"
                write_frames(args.source, args.width, args.height, frames, frames_file)
                commands[f"reference {label}"] = reference_command(side_args, python, model_dir, vae_dir, frames_file)
        for index in range(args.pairs):
            order = list(commands) if index % 2 == 0 else list(reversed(commands))
            for name in order:
                result = run_json(commands[name])
                runs.setdefault(name, []).append(result)
                print(f"run {index + 1} {name}: {cpu_per_frame(result):.3f} CPU s per frame, "
                      f"{result['skipped']} of {result['frames']} skipped", file=sys.stderr, flush=True)
    report: dict = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    for side in ("vcam", "reference"):
        if f"{side} on" in runs:
            on = statistics.median(cpu_per_frame(r) for r in runs[f"{side} on"])
            off = statistics.median(cpu_per_frame(r) for r in runs[f"{side} off"])
            report[side] = {"cpu_per_frame_on": round(on, 4), "cpu_per_frame_off": round(off, 4),
                            "cut": round(off / on, 2)}
            print(f"{side}: {off:.3f} CPU s per frame with the filter off, {on:.3f} on: {off / on:.2f}x less",
                  file=sys.stderr)
    report["moving"] = moving_scene_skips(args, args.moving_frames)
    moving = report["moving"]
    print(f"moving sample, filter on: {moving['processed_share']:.0%} of frames processed, longest skip run "
          f"{moving['longest_skip_run']} frames ({moving['longest_freeze_ms']:.0f} ms at {CAMERA_FPS:.0f} fps)",
          file=sys.stderr)
    if args.json:
        print(json.dumps(report))


if __name__ == "__main__":
    main()
