"""The photographs the tiny model is trained and tested on, and the augmentation of a training view.

Only pictures bundled in the scikit-image wheel are used (no download). `chelsea` (the same photo as `cat`) is held
out of training: tests and quality figures use it, so they measure the model on a photo it has never seen.
Grayscale pictures add texture and shapes; they are trained as colour images with equal channels.
"""
from __future__ import annotations

import cv2
import numpy as np

HELD_OUT_PHOTO = "chelsea"  # never in training (skimage's `cat` is the same picture)
UNRELATED_PHOTO = "coffee"  # a second photo for tests that need a picture with different shapes
TRAINING_PHOTOS = (
    "astronaut", "coffee", "rocket", "motorcycle_left", "motorcycle_right", "hubble_deep_field",
    "immunohistochemistry", "retina", "colorwheel", "logo", "camera", "coins", "grass", "gravel", "brick", "clock",
)


def load_photo(name: str) -> np.ndarray:
    """A bundled picture as (H, W, 3) float32 RGB in [0, 1] (gray expanded to 3 channels, alpha over white)."""
    from skimage import data

    if name.startswith("motorcycle_"):
        left, right, _ = data.stereo_motorcycle()
        pixels = left if name.endswith("left") else right
    else:
        pixels = getattr(data, name)()
    image = np.asarray(pixels, dtype=np.float32) / (1.0 if pixels.dtype.kind == "f" else 255.0)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.shape[2] == 4:
        alpha = image[..., 3:]
        image = image[..., :3] * alpha + (1.0 - alpha)
    return np.ascontiguousarray(image[..., :3])


def square_view(image: np.ndarray, size: int) -> np.ndarray:
    """The centre square of `image` resized to (size, size, 3): how a camera frame reaches a square model."""
    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return cv2.resize(image[top:top + side, left:left + side], (size, size), interpolation=cv2.INTER_AREA)


def random_view(image: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A random (size, size, 3) training view: crop covering 30-100 % of the short side, rotation of up to
    +-10 degrees, a horizontal flip half the time, brightness / contrast / saturation jitter of +-15 %.

    One affine warp does crop, scale and rotation together (edges are reflected, never black)."""
    h, w = image.shape[:2]
    side = min(h, w) * rng.uniform(0.3, 1.0)
    scale = size / side
    angle = rng.uniform(-10.0, 10.0)
    cx = rng.uniform(side / 2, w - side / 2)
    cy = rng.uniform(side / 2, h - side / 2)
    matrix = cv2.getRotationMatrix2D((cx, cy), angle, scale)
    matrix[:, 2] += (size / 2 - cx, size / 2 - cy)
    view = cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REFLECT_101)
    if rng.random() < 0.5:
        view = view[:, ::-1]
    gray = view.mean(axis=2, keepdims=True)
    view = gray + (view - gray) * rng.uniform(0.85, 1.15)  # saturation
    view = (view - 0.5) * rng.uniform(0.85, 1.15) + 0.5  # contrast
    view = view * rng.uniform(0.85, 1.15)  # brightness
    return np.ascontiguousarray(np.clip(view, 0.0, 1.0), dtype=np.float32)
