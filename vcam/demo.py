"""`vcam demo`: what vcam does, in one video and one picture, offline.

The trained `tiny` model restyles the sample source (a real photograph moved like a hand-held webcam) and writes
- `vcam-demo.mp4`: input | output side by side, the style switching every quarter of the video (named on the
  output half); each output is paired with the input frame it was made from (the stream batch gives it T-1 calls
  later), so the two halves show the same moment;
- `vcam-demo.png`: a contact sheet, one input frame and that same frame in each of the four styles, labelled.

It drives `core.DiffusionStream` directly, one frame after the other (no threads, no pacing), so the files are the
same on every run and as fast as the model allows.
"""
from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from core.config import SimilarityFilterConfig, StreamConfig
from vcam.fallbacks import settle_model
from vcam.framing import fit_frame
from vcam.options import given_values, option_name
from vcam.overlay import draw_status
from vcam.sections import GROUPS_BY_KEY, OutputSection, user_fields
from vcam.settings import RunSettings, resolve_settings
from vcam.file_sinks import VideoFileSink
from vcam.sinks import SinkConfig, SinkError
from vcam.sources import SourceConfig, open_source

# Four of the five styles the tiny model was trained on (see the tiny preset), the four that differ most.
DEMO_STYLES = ("sepia photograph", "pencil sketch", "neon glow", "inverted colours")
DEMO_FRAMES = 96  # 3.2 s at 30 fps: 24 frames a style, and the sample's visitor walks in during the second style
DEMO_FPS = 30.0
SHEET_FRAME = 80  # the sample frame on the contact sheet: the visitor stands in front of the scene
VIDEO_NAME, SHEET_NAME = "vcam-demo.mp4", "vcam-demo.png"
DEMO_SOURCE = "sample:chelsea"  # the photo the tiny model never saw in training: the demo shows it generalise
BLEND_FRAMES = 4  # style switches in the video blend over this many frames (as `blend` commands do)


class DemoError(Exception):
    """The demo cannot write its files; the one-line message says what to change."""


@dataclass(frozen=True)
class SheetLayout:
    """Where each panel of the contact sheet is: a row of `panels` pictures of `width` x `height`, each under a
    label strip, `gutter` pixels apart and from the edges. Panel 0 is the input, 1.. the styles in order."""

    width: int
    height: int
    panels: int = 1 + len(DEMO_STYLES)
    gutter: int = 8
    label_height: int = 28

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the whole sheet in pixels."""
        return (self.panels * (self.width + self.gutter) + self.gutter,
                self.label_height + self.height + 2 * self.gutter)

    def panel_origin(self, index: int) -> tuple[int, int]:
        """(x, y) of panel `index`'s picture (below its label)."""
        return self.gutter + index * (self.width + self.gutter), self.gutter + self.label_height


@dataclass(frozen=True)
class DemoResult:
    video: Path
    sheet: Path
    frames: int
    styles: tuple[str, ...]


def demo_source_config(settings: RunSettings) -> SourceConfig:
    """The sample source at the model's resolution: the whole moving view goes in, nothing is cropped away."""
    return SourceConfig(width=settings.stream.width, height=settings.stream.height, fps=DEMO_FPS, live=False)


def run_demo(settings: RunSettings, out_dir: Path, frames: int = DEMO_FRAMES,
             styles: tuple[str, ...] = DEMO_STYLES, source: str = DEMO_SOURCE,
             owns_process: bool = False, progress: bool = False) -> DemoResult:
    """Write `vcam-demo.mp4` (`frames` frames of input | output) and `vcam-demo.png` into `out_dir`; `progress`: a
    line on stderr saying what is made once the checks pass, then a bar while the frames are made (a terminal
    only: tqdm's own check), since a run takes seconds to minutes.

    Raises DemoError for a folder that cannot be written, and the usual ModelError / SourceError for a bad model
    or source.
    """
    if frames < len(styles):
        raise DemoError(f"--frames must be at least {len(styles)} (one per style), got {frames}")
    if not out_dir.is_dir():
        raise DemoError(f"output folder {out_dir} does not exist; create it or pass --out with another folder")
    # Here, after the checks, not at the top: torch loads with these, and the demo's mistakes (the settings, the
    # model's files, the folder) answer before it, as `vcam run`'s do.
    from vcam.processor import frames_to_tensor, tensor_to_frames
    from vcam.runtime import build_stream, create_engine_for

    if progress:
        steps = settings.stream.steps
        print(f"vcam: the demo restyles {frames} frames of {source} with {settings.model.model} at "
              f"{settings.stream.width}x{settings.stream.height}, {steps} step{'s' * (steps != 1)} a frame",
              file=sys.stderr, flush=True)
    settings = replace(settings, filter=replace(settings.filter, enabled=False))  # every frame is a new picture
    stream = build_stream(create_engine_for(settings, owns_process=owns_process), settings)
    width, height, lag = settings.stream.width, settings.stream.height, settings.stream.steps - 1
    video_path, sheet_path = out_dir / VIDEO_NAME, out_dir / SHEET_NAME
    try:
        sink = VideoFileSink(video_path, SinkConfig(width=2 * width, height=height, fps=DEMO_FPS))
    except SinkError as error:
        raise DemoError(str(error)) from None

    def restyle(frame: np.ndarray) -> np.ndarray:
        return tensor_to_frames(stream.process(frames_to_tensor([frame], width, height, "crop")))[0]

    source_frames = open_source(source, demo_source_config(settings))
    inputs = [source_frames.read() for _ in range(frames + lag)]  # the last `lag` only push the others out
    source_frames.close()
    def style_of(index: int) -> str:  # the video's quarters, one style each
        return styles[min(len(styles) - 1, index * len(styles) // frames)]

    stream.prompts.switch(styles[0])
    stream.warmup(frames_to_tensor([inputs[0]], width, height, "crop"))
    try:
        for index, frame in enumerate(tqdm(inputs, desc="vcam demo", unit="frame", file=sys.stderr, leave=False,
                                           disable=None if progress else True)):
            if style_of(index) != stream.prompts.text:
                stream.prompts.switch(style_of(index), blend_frames=BLEND_FRAMES)
            output = restyle(frame)
            made_from = index - lag  # the input this output was made from
            if made_from >= 0:
                shown = fit_frame(inputs[made_from], width, height, "crop")
                sink.write(np.hstack([shown, draw_status(output, [style_of(made_from)])]))
    finally:
        sink.close()

    still = inputs[min(SHEET_FRAME, frames - 1)]
    panels = [fit_frame(still, width, height, "crop")]
    for style in styles:  # the same frame in each style, fully denoised with that prompt (no blend, no history)
        stream.prompts.switch(style)
        panels.append(tensor_to_frames(stream.warmup(frames_to_tensor([still], width, height, "crop")))[0])
    write_sheet(sheet_path, panels, ["input (sample photo)", *styles])
    return DemoResult(video=video_path, sheet=sheet_path, frames=frames, styles=tuple(styles))


LABEL_FONT = cv2.FONT_HERSHEY_SIMPLEX


def label_scale(labels: list[str], width: int, label_height: int) -> float:
    """The font scale of the panels' labels: 0.7 for the 28-pixel strip, smaller where a label would be wider than
    `width` pixels (a small demo's panels), so none runs into the next panel or off the sheet; one scale for all."""
    scale = label_height / 40
    widest = max(cv2.getTextSize(label, LABEL_FONT, scale, 1)[0][0] for label in labels)
    return scale * min(1.0, width / widest)


def write_sheet(path: Path, panels: list[np.ndarray], labels: list[str]) -> None:
    """The contact sheet: `panels` (H, W, 3) RGB in a row on white, each under its label (see `SheetLayout`)."""
    height, width = panels[0].shape[:2]
    layout = SheetLayout(width=width, height=height, panels=len(panels))
    sheet_w, sheet_h = layout.size
    sheet = np.full((sheet_h, sheet_w, 3), 255, dtype=np.uint8)
    scale = label_scale(labels, width - 4, layout.label_height)
    for index, (panel, label) in enumerate(zip(panels, labels)):
        x, y = layout.panel_origin(index)
        sheet[y : y + height, x : x + width] = panel
        cv2.putText(sheet, label, (x + 2, y - layout.label_height // 3), LABEL_FONT, scale, (20, 20, 20), 1,
                    cv2.LINE_AA)
    if not cv2.imwrite(str(path), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9]):
        raise DemoError(f"cannot write {path}; is the folder writable?")


# Settings `vcam demo` shares with `run` but has no use for: it writes its own two files from every frame.
IGNORED_FIELDS = (("output", OutputSection, None), ("filter", SimilarityFilterConfig, None),
                  ("stream", StreamConfig, ("prompt", "mode")))


def _ignored_options(args: argparse.Namespace) -> dict[str, str]:
    """The options the user gave that the demo ignores, spelled as on the command line, each with its `args` key."""
    ignored: dict[str, str] = {}
    for key, cls, only in IGNORED_FIELDS:
        group = GROUPS_BY_KEY[key]
        fields = {f.name: f for f, _ in user_fields(cls, where="cli")}
        ignored |= {option_name(group, fields[name]): f"{key}.{name}" for name in given_values(args, group, cls)
                    if only is None or name in only}
    if args.output_size is not None:
        ignored["--output-size"] = "output_size"
    return ignored


def demo_command(args: argparse.Namespace) -> int:
    """`vcam demo`: the tiny preset's settings (or the options given), the sample source, files into --out.

    An option the demo ignores is said once and dropped before the settings are read, so a value that `run` would
    refuse (`--sink clip.xyz`) cannot stop a demo it has no part in."""
    ignored = _ignored_options(args)
    if ignored:
        verb = "has" if len(ignored) == 1 else "have"
        print(f"vcam: {', '.join(ignored)} {verb} no effect on the demo (it writes {VIDEO_NAME} and {SHEET_NAME})",
              file=sys.stderr)
        args = argparse.Namespace(**{**vars(args), **dict.fromkeys(ignored.values())})
    settings = resolve_settings(args, default_preset="tiny")
    settings = settle_model(settings, notify=logging.getLogger("vcam").info)  # files only: before torch loads
    result = run_demo(settings, Path(args.out).expanduser(), frames=args.frames or DEMO_FRAMES,
                      source=getattr(args, "camera.source", None) or DEMO_SOURCE, owns_process=True, progress=True)
    print(f"vcam: the demo wrote {result.video} ({result.frames} frames, input | output) and {result.sheet} "
          f"(the input and {len(result.styles)} styles)")
    return 0
