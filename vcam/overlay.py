"""Small status text drawn onto frames: the preview window's fps / skip rate / prompt, the "camera lost" notice.

Text is sized from the frame height so it stays readable on 256x256 and 1280x720 alike, and sits on a dark
box so it shows on any image.
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

_FONT = cv2.FONT_HERSHEY_SIMPLEX


def draw_status(frame: np.ndarray, lines: Sequence[str]) -> np.ndarray:
    """Return a copy of `frame` (H, W, 3) uint8 with `lines` written in its top-left corner.

    A copy, because the caller often keeps the clean frame (the last good camera image is reused for every
    notice frame while the camera is away).
    """
    out = frame.copy()
    lines = [line for line in lines if line]
    if not lines:
        return out
    height, width = out.shape[:2]
    scale = _text_scale(lines, height, width)
    thickness = max(1, round(scale * 2))
    margin = max(2, round(6 * scale))
    sizes = [cv2.getTextSize(line, _FONT, scale, thickness) for line in lines]
    line_height = max(h + baseline for (_, h), baseline in sizes) + margin
    box_width = max(w for (w, _), _ in sizes) + 2 * margin
    box_height = line_height * len(lines) + margin
    box = out[:box_height, :box_width]
    box[:] = (box.astype(np.uint16) * 2 // 5).astype(np.uint8)  # darken, so white text reads on bright images
    for index, line in enumerate(lines):
        baseline_y = margin + line_height * index + sizes[index][0][1]
        cv2.putText(out, line, (margin, baseline_y), _FONT, scale, (255, 255, 255), thickness, cv2.LINE_AA)
    return out


def _text_scale(lines: Sequence[str], height: int, width: int) -> float:
    """The font scale: from the frame height, smaller where the widest line would run off a narrow frame (a
    portrait output), never below the smallest readable size (a line longer than a tiny frame is cut instead)."""
    readable, by_height = 0.3, max(0.3, height / 720 * 0.8)
    widest = max(cv2.getTextSize(line, _FONT, by_height, max(1, round(by_height * 2)))[0][0] for line in lines)
    room = width - 2 * max(2, round(6 * by_height))
    return max(readable, min(by_height, by_height * room / widest)) if widest > 0 else by_height


class NoticedFrame(np.ndarray):
    """A frame that carries notice lines for the output to draw once it has fitted the frame to its own size: drawn
    before fitting, a notice in the top-left corner is cut off whenever the fit crops the top or the left (a 4:3
    camera on a 16:9 output). Slices and copies keep the lines (numpy calls `__array_finalize__` for them)."""

    notices: tuple[str, ...] = ()

    def __array_finalize__(self, obj: object) -> None:
        self.notices = getattr(obj, "notices", ())


def with_notices(frame: np.ndarray, lines: Sequence[str]) -> np.ndarray:
    """`frame` (H, W, 3) uint8, unchanged, carrying `lines` (see `NoticedFrame`)."""
    noticed = frame.view(NoticedFrame)
    noticed.notices = tuple(line for line in lines if line)
    return noticed


def notices_of(frame: np.ndarray) -> tuple[str, ...]:
    """The notice lines a frame carries (none for a plain array)."""
    return getattr(frame, "notices", ())
