"""Where frames come from: a camera, a video or image file, or a generated pattern, chosen by a spec string.

Specs: `camera:0`, `camera:/dev/video2`, `sample[:NAME]`, `sample:static` (a real photo moved like a hand-held
webcam, see `vcam.sample_source`), `synthetic`, `synthetic:static`, or a path to a video / image file.
Every source hands out (H, W, 3) uint8 RGB frames through the `core.frame_io.FrameSource` contract. A `live`
source behaves like a camera (real time, paced by `core.pacing.FramePacer`; the pipeline keeps only the newest
frame); a non-live one is read as fast as it is consumed and nothing is dropped.

The kinds are a registry (`SOURCE_KINDS`, by the spec's prefix; anything else is a file path), and
`open_first_source` tries several specs in order (the asked-for one, then the sample photo), joining their errors.
A camera or live video file that goes away mid-stream does not end the broadcast: see `vcam.reconnecting_source`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from core.frame_io import FrameSource
from vcam.backends import open_first
from vcam.camera_source import open_camera
from vcam.file_sources import open_file
from vcam.generated_sources import open_synthetic
from vcam.source_base import SourceConfig, SourceError

__all__ = ["FrameSource", "SOURCE_KINDS", "SourceConfig", "SourceError", "SourceKind", "open_first_source",
           "open_source"]

SPEC_FORMS = ("camera:0, camera:/dev/video2, sample, sample:NAME, sample:static, synthetic, synthetic:static, "
              "or a video/image file path")


def _open_sample(arg: str, config: SourceConfig) -> FrameSource:
    from vcam.sample_source import open_sample  # imported when asked for: scikit-image is slow to import

    return open_sample(arg, config)


@dataclass(frozen=True)
class SourceKind:
    """One kind of source: the spec's `prefix` (`camera` in `camera:0`) and what opens the rest of the spec."""

    prefix: str
    open: Callable[[str, SourceConfig], FrameSource]


SOURCE_KINDS: tuple[SourceKind, ...] = (
    SourceKind("camera", open_camera),
    SourceKind("sample", _open_sample),
    SourceKind("synthetic", open_synthetic),
)


def open_source(spec: str, config: SourceConfig = SourceConfig()) -> FrameSource:
    """Open the source named by `spec` (see the module docstring for the forms); SourceError in one line."""
    spec = spec.strip()
    if not spec:
        raise SourceError(f"empty source; use {SPEC_FORMS}")
    if config.fps is not None and config.fps < 0:
        raise SourceError(f"fps must be positive, got {config.fps}")
    kind, _, arg = spec.partition(":")
    for source_kind in SOURCE_KINDS:
        if source_kind.prefix == kind:
            return source_kind.open(arg, config)
    return open_file(source_file(spec), config)


def source_file(spec: str) -> Path:
    """The file a spec that names no source kind is; SourceError naming the fix if there is none."""
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    if path.exists():
        raise SourceError(f"source {spec!r} is not a file; use {SPEC_FORMS}")
    kind = spec.partition(":")[0]
    if ":" in spec and len(kind) > 1:  # a one-letter kind is a Windows drive, so that spec is a missing path
        raise SourceError(f"unknown source kind {kind!r}; use {SPEC_FORMS}")
    raise SourceError(f"source file not found: {spec} (check the path, or use camera:0 or synthetic)")


def check_source_spec(spec: str) -> None:
    """A source spec's mistakes that need no device (an empty spec, an unknown kind, a missing file), raised as
    opening it would: the settings check it before anything opens, so the mistake is one line at once."""
    spec = spec.strip()
    if not spec:
        raise SourceError(f"empty source; use {SPEC_FORMS}")
    kind = spec.partition(":")[0]
    if not any(source_kind.prefix == kind for source_kind in SOURCE_KINDS):
        source_file(spec)


def open_first_source(candidates: Sequence[tuple[str, SourceConfig]]) -> tuple[str, FrameSource, list[str]]:
    """The first of (spec, config) that opens: (spec, source, 'spec: error' of those tried before it); one
    SourceError naming every error if none does (a single candidate's own error as it is)."""
    return open_first([(spec, lambda spec=spec, config=config: open_source(spec, config))
                       for spec, config in candidates], SourceError, "no source could open: ")
