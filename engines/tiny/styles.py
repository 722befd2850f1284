"""The five styles the trained `tiny` model knows, each defined as an image transform of the photograph.

A real model learns a style from captioned pictures; the tiny one learns it from pairs (photo, transform(photo)),
so the transform is the ground truth of what the prompt should do. Tests and the demo import the same functions
to check the model's output against them (`STYLES[name](photo)`).

Images are float32 arrays (H, W, 3) in [0, 1], H and W multiples of 8 (the VAE's cell: pixel-art blocks are
aligned to it). Every transform is deterministic and cheap (a few ms at 256x256), so training can apply it to
fresh random crops at every step.
"""
from __future__ import annotations

from typing import Callable

import cv2
import numpy as np

Image = np.ndarray  # (H, W, 3) float32 in [0, 1]

IDENTITY_PROMPT = "photograph"  # the photo itself: what an img2img with no style change should return
PIXEL_BLOCK = 8  # pixel-art block side in pixels: one latent cell of a scale-factor-8 VAE
PIXEL_LEVELS = 6  # pixel-art colour levels per channel

# sRGB -> sepia tone (the classic Microsoft / W3C `sepia()` matrix); rows are output R, G, B.
_SEPIA = np.array([[0.393, 0.769, 0.189], [0.349, 0.686, 0.168], [0.272, 0.534, 0.131]], dtype=np.float32)


def _gray(image: Image) -> np.ndarray:
    """(H, W) luma, ITU-R BT.601 weights."""
    return (image @ np.array([0.299, 0.587, 0.114], dtype=np.float32)).astype(np.float32)


def sepia(image: Image) -> Image:
    """Warm brown monochrome: the sepia matrix applied per pixel."""
    return np.clip(image @ _SEPIA.T, 0.0, 1.0).astype(np.float32)


def pencil_sketch(image: Image) -> Image:
    """Graphite on white paper: colour-dodge of the gray image by its blurred negative (the classic darkroom
    sketch trick), so edges become dark strokes and flat areas white paper; then a slight darkening curve."""
    gray = _gray(image)
    blurred_negative = cv2.GaussianBlur(1.0 - gray, (0, 0), sigmaX=3.0)
    dodge = np.clip(gray / np.maximum(1.0 - blurred_negative, 1e-3), 0.0, 1.0) ** 2.0
    return np.repeat(dodge[..., None], 3, axis=2).astype(np.float32)


def neon_glow(image: Image) -> Image:
    """Glowing edges on black: the Sobel edge strength, coloured by the photo's own hue at full saturation and
    brightness, plus a wide blurred halo of the same light."""
    gray = cv2.GaussianBlur(_gray(image), (0, 0), sigmaX=1.0)
    gx = cv2.Sobel(gray, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(gray, cv2.CV_32F, 0, 1, ksize=3)
    edges = np.clip(np.hypot(gx, gy) * 2.0, 0.0, 1.0)
    hsv = cv2.cvtColor(image.astype(np.float32), cv2.COLOR_RGB2HSV)  # H in degrees, S and V in [0, 1]
    hsv[..., 1] = 1.0
    hsv[..., 2] = 1.0
    colour = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    light = colour * edges[..., None]
    halo = cv2.GaussianBlur(light, (0, 0), sigmaX=4.0)
    return np.clip(light + halo, 0.0, 1.0).astype(np.float32)


def inverted_colours(image: Image) -> Image:
    """The photographic negative: 1 - x per channel."""
    return (1.0 - image).astype(np.float32)


def pixel_art(image: Image) -> Image:
    """Blocky retro game look: the mean colour of each 8x8 block, posterised to 6 levels per channel."""
    h, w = image.shape[:2]
    small = cv2.resize(image, (w // PIXEL_BLOCK, h // PIXEL_BLOCK), interpolation=cv2.INTER_AREA)
    small = np.round(small * (PIXEL_LEVELS - 1)) / (PIXEL_LEVELS - 1)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST).astype(np.float32)


# Prompt text -> transform. The names are the prompt texts the model was trained on (and the tiny preset's).
STYLES: dict[str, Callable[[Image], Image]] = {
    "sepia photograph": sepia,
    "pencil sketch": pencil_sketch,
    "neon glow": neon_glow,
    "inverted colours": inverted_colours,
    "pixel art": pixel_art,
}


def identity(image: Image) -> Image:
    """The photo unchanged: the target for the identity prompt and the empty (negative) prompt."""
    return image.astype(np.float32)


# Every prompt the model is trained on, with its target transform ("" is the unconditional / negative prompt).
TRAINING_PROMPTS: dict[str, Callable[[Image], Image]] = {**STYLES, IDENTITY_PROMPT: identity, "": identity}
