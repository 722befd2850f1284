"""`--source sample[:NAME][:static]`: a real photograph moved like a hand-held webcam, for machines with no camera.

A synthetic pattern says nothing about whether a model keeps a picture's structure; a real photograph does. The
photographs are the ones scikit-image ships (no download). The view drifts like a webcam held in a hand: a slow
pan and zoom over the photo, a slight shake and roll, sensor noise, and every few seconds a person-sized cut-out of
another photograph (the astronaut, or over the astronaut the cat) slides in from the right, stays, and leaves.
`sample:static` is the still photograph with none of that, for the similarity filter's "nothing moves" case.

Frames are a pure function of (photo, size, fps, seed, frame index): the motion is sinusoids whose phases come from
a seeded numpy generator, and the noise is a window of a seeded noise field at an offset seeded with (seed, index),
so every machine and every run gets the same frames. Time is frame index / fps, so the motion looks the same at any
frame rate.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

from vcam.generated_sources import GeneratedSource
from vcam.source_base import DEFAULT_CAMERA_FPS, SourceConfig, SourceError

DEFAULT_SAMPLE = "coffee"
NOISE_SIGMA = 2.5  # sensor noise, in 8-bit levels: a decent webcam in good light
NOISE_MARGIN = 64  # the noise field is this much larger than the frame, so each frame's window differs
ZOOM_RANGE = (1.05, 1.25)  # view size relative to the largest view of the output's aspect that fits the photo
SHAKE = 0.0025  # hand shake amplitude, as a fraction of the view width
ROLL_DEGREES = 0.35  # hand roll amplitude
# When the cut-out is in view, in seconds of a 12-second cycle: enters over 1.5 s, stays 3.5 s, leaves over 1.5 s.
OBJECT_CYCLE_S, OBJECT_ENTER_S, OBJECT_STAY_S, OBJECT_MOVE_S = 12.0, 1.0, 3.5, 1.5
OBJECT_HEIGHT = 0.85  # of the frame height, standing on the bottom edge like someone in front of the camera
OBJECT_RESTING_X = 0.62  # where its left edge rests, as a fraction of the frame width


def _photo_loaders() -> dict[str, Callable[[], np.ndarray]]:
    """Name -> loader of the colour photographs bundled with scikit-image (imported here: it is slow to import)."""
    try:
        from skimage import data
    except ImportError:
        raise SourceError("the sample source needs scikit-image: pip install scikit-image") from None
    return {
        "astronaut": data.astronaut,
        "coffee": data.coffee,
        "chelsea": data.chelsea,
        "rocket": data.rocket,
        "motorcycle": lambda: data.stereo_motorcycle()[0],
        "camera": lambda: cv2.cvtColor(data.camera(), cv2.COLOR_GRAY2RGB),
    }


SAMPLE_NAMES = ("astronaut", "coffee", "chelsea", "rocket", "motorcycle", "camera")


def load_photo(name: str) -> np.ndarray:
    """The bundled photograph `name` as (H, W, 3) uint8 RGB; SourceError listing the names if there is none."""
    loaders = _photo_loaders()
    if name not in loaders:
        raise SourceError(f"unknown sample photo {name!r}; use sample or sample:NAME with NAME one of "
                          f"{', '.join(SAMPLE_NAMES)} (or sample:static for the still photo)")
    return np.ascontiguousarray(loaders[name]())


@dataclass(frozen=True)
class Cutout:
    """A soft-edged cut-out of a photo: a box and the ellipses (centre, half-axes, in photo pixels) that cover the
    subject inside it. Ellipses, not a segmentation, so it costs nothing and is the same everywhere."""

    photo: str
    box: tuple[int, int, int, int]  # x0, y0, x1, y1
    ellipses: tuple[tuple[int, int, int, int], ...]  # (cx, cy, ax, ay)


# The astronaut's head and shoulders walk into every scene but her own, where the cat looks in instead.
PERSON = Cutout("astronaut", (20, 0, 400, 512), ((225, 110, 80, 108), (205, 420, 190, 235)))
CAT = Cutout("chelsea", (30, 0, 430, 300), ((230, 150, 195, 150),))


def _cutout_rgba(cutout: Cutout, height: int) -> np.ndarray:
    """The cut-out scaled to `height` rows: (height, w, 4) float32, RGB in 0..255 and alpha in 0..1."""
    x0, y0, x1, y1 = cutout.box
    photo = load_photo(cutout.photo)[y0:y1, x0:x1]
    mask = np.zeros(photo.shape[:2], dtype=np.uint8)
    for cx, cy, ax, ay in cutout.ellipses:
        cv2.ellipse(mask, (cx - x0, cy - y0), (ax, ay), 0, 0, 360, 255, thickness=-1)
    feather = max(3, (y1 - y0) // 40) | 1
    mask = cv2.GaussianBlur(mask, (feather, feather), 0)
    width = max(1, round(photo.shape[1] * height / photo.shape[0]))
    rgb = cv2.resize(photo, (width, height), interpolation=cv2.INTER_AREA).astype(np.float32)
    alpha = cv2.resize(mask, (width, height), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    return np.dstack([rgb, alpha])


class SampleSource(GeneratedSource):
    """A photograph seen through a hand-held webcam, at `width` x `height`, as (H, W, 3) uint8 RGB frames.

    `frame(index)` is random access (the source's own `read()` walks it from 0); `moving=False` gives the still
    photograph at the start view. `live` paces `read()` at `fps` like a camera.
    """

    def __init__(self, photo: str = DEFAULT_SAMPLE, width: int = 1280, height: int = 720, fps: float | None = None,
                 moving: bool = True, live: bool = False, seed: int = 0, with_object: bool = True) -> None:
        if width <= 0 or height <= 0:
            raise SourceError(f"sample size must be positive, got {width}x{height}")
        self.photo_name = photo
        super().__init__(live, fps)
        self.width, self.height = width, height
        self.fps = fps or DEFAULT_CAMERA_FPS
        self.moving = moving
        self.seed = seed
        self._photo = load_photo(photo)
        photo_h, photo_w = self._photo.shape[:2]
        # Photo pixels per output pixel for the largest view of the output's aspect ratio that fits in the photo.
        self._base_scale = min(photo_w / width, photo_h / height)
        rng = np.random.default_rng(seed)
        self._phases = rng.uniform(0.0, 2.0 * math.pi, size=10)
        self._shake_hz = rng.uniform(1.3, 3.7, size=3)
        self._object = None
        self._noise = None
        if moving:  # (H + margin, W + margin, 3) int16: the sensor noise every frame takes a window of
            shape = (height + NOISE_MARGIN, width + NOISE_MARGIN, 3)
            self._noise = np.rint(rng.standard_normal(shape, dtype=np.float32) * NOISE_SIGMA).astype(np.int16)
        if with_object and moving:
            self._object = _cutout_rgba(CAT if photo == PERSON.photo else PERSON, max(2, round(height * OBJECT_HEIGHT)))

    # --- the camera path -----------------------------------------------------------------------------------
    def view(self, index: int) -> tuple[float, float, float, float]:
        """Where the camera looks at frame `index`: (centre x, centre y in photo pixels, zoom, roll in degrees)."""
        photo_h, photo_w = self._photo.shape[:2]
        p = self._phases
        t = index / self.fps if self.moving else 0.0
        low, high = ZOOM_RANGE
        zoom = low + (high - low) * (0.5 + 0.5 * math.sin(2 * math.pi * t / 11.0 + p[0]))
        scale = self._base_scale / zoom  # photo pixels per output pixel
        margin_x = (photo_w - self.width * scale) / 2  # how far the view centre may move before leaving the photo
        margin_y = (photo_h - self.height * scale) / 2
        cx = photo_w / 2 + 0.85 * margin_x * math.sin(2 * math.pi * t / 13.0 + p[1])
        cy = photo_h / 2 + 0.85 * margin_y * math.sin(2 * math.pi * t / 17.0 + p[2])
        roll = 0.0
        if self.moving:  # hand shake: a few incommensurate tremors on top of the slow drift
            shake = self.width * scale * SHAKE
            cx += shake * sum(math.sin(2 * math.pi * f * t + p[3 + i]) for i, f in enumerate(self._shake_hz)) / 2
            cy += shake * sum(math.cos(2 * math.pi * f * t + p[6 + i]) for i, f in enumerate(self._shake_hz)) / 2
            roll = ROLL_DEGREES * math.sin(2 * math.pi * self._shake_hz[0] * 0.4 * t + p[9])
        return cx, cy, zoom, roll

    def object_left(self, index: int) -> int | None:
        """Left edge (output pixels) of the entering cut-out at frame `index`, or None while it is out of view."""
        if self._object is None:
            return None
        t = (index / self.fps) % OBJECT_CYCLE_S - OBJECT_ENTER_S
        rest = OBJECT_RESTING_X * self.width
        if t < 0 or t > OBJECT_STAY_S + 2 * OBJECT_MOVE_S:
            return None
        if t < OBJECT_MOVE_S:  # sliding in from beyond the right edge, slowing down (ease-out)
            k = 1 - (1 - t / OBJECT_MOVE_S) ** 2
            return round(self.width + (rest - self.width) * k)
        if t < OBJECT_MOVE_S + OBJECT_STAY_S:
            return round(rest)
        k = ((t - OBJECT_MOVE_S - OBJECT_STAY_S) / OBJECT_MOVE_S) ** 2  # leaving, speeding up (ease-in)
        return round(rest + (self.width - rest) * k)

    # --- rendering -----------------------------------------------------------------------------------------
    def frame(self, index: int) -> np.ndarray:
        """Frame `index` as (height, width, 3) uint8 RGB; the same on every call and every machine."""
        cx, cy, zoom, roll = self.view(index)
        scale = self._base_scale / zoom
        # Output pixel (u, v) -> photo point: rotate by `roll` about the output centre, scale, centre on (cx, cy).
        cos, sin = math.cos(math.radians(roll)) * scale, math.sin(math.radians(roll)) * scale
        u0, v0 = (self.width - 1) / 2, (self.height - 1) / 2
        to_photo = np.array([[cos, -sin, cx - cos * u0 + sin * v0],
                             [sin, cos, cy - sin * u0 - cos * v0]], dtype=np.float64)
        out = cv2.warpAffine(self._photo, to_photo, (self.width, self.height),
                             flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT_101)
        if not self.moving:
            return out
        left = self.object_left(index)
        if left is not None:
            self._paste_object(out, left)
        return self._add_noise(out, index)

    def _paste_object(self, out: np.ndarray, left: int) -> None:
        obj = self._object
        assert obj is not None
        visible = min(obj.shape[1], self.width - left)
        if visible <= 0:
            return
        rows = slice(self.height - obj.shape[0], self.height)
        region = out[rows, left : left + visible].astype(np.float32)  # (h, visible, 3)
        part = obj[:, :visible]
        alpha = part[..., 3:]
        out[rows, left : left + visible] = (region * (1 - alpha) + part[..., :3] * alpha + 0.5).astype(np.uint8)

    def _add_noise(self, out: np.ndarray, index: int) -> np.ndarray:
        """Add this frame's sensor noise: a window of the fixed noise field at an offset seeded by the index (a fresh
        draw per frame costs ~50 ms at 720p on one core; this ~3 ms, and no two neighbouring frames share it)."""
        dy, dx = np.random.default_rng((self.seed, index)).integers(0, NOISE_MARGIN, size=2)
        window = self._noise[dy : dy + self.height, dx : dx + self.width]
        return cv2.add(out, window, dtype=cv2.CV_8U)  # saturating: uint8 + int16 -> uint8


def open_sample(arg: str, config: SourceConfig) -> SampleSource:
    """`sample`, `sample:NAME`, `sample:static` or `sample:NAME:static` at the configured size and rate."""
    parts = [part.strip() for part in arg.split(":") if part.strip()]
    moving = "static" not in parts
    names = [part for part in parts if part != "static"]
    if len(names) > 1:
        raise SourceError(f"sample takes one photo name, got {arg!r}; e.g. sample:coffee or sample:coffee:static")
    live = config.live if config.live is not None else config.fps is not None
    return SampleSource(names[0] if names else DEFAULT_SAMPLE, *config.pattern_size, fps=config.fps,
                        moving=moving, live=live)
