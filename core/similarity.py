"""Stochastic similarity filter: skip inference on frames that look like the last processed one.

On a static scene (someone reading, an empty room) every camera frame is nearly the same, and running the UNet
on each of them burns GPU power for an output nobody can tell apart. The filter compares the new input with the
input of the last frame that was *processed* and skips with probability

    p = max(0, (cos - threshold) / (1 - threshold))

so a near-identical frame is usually skipped, a clearly different one (cos below the threshold) never is, and
at most `max_skip` frames in a row are skipped, so even a perfectly still scene keeps refreshing. Comparing
against the last processed input (not the last seen one) means a slow drift accumulates until it is processed:
a scene can never freeze by changing a little at a time.

The cosine is taken on a copy average-pooled to at most 32x32 per channel (3 072 numbers), which costs
microseconds next to a UNet call whatever the stream resolution, and averages camera sensor noise away.
Pass zero-centred pixels ([-1, 1], the Engine's image range): in [0, 1] every frame shares a large constant
offset that pushes the cosine of a moving scene up towards 1 (an 8-pixel pan scores ~0.98 instead of ~0.88).
"""
from __future__ import annotations

import random

import torch
import torch.nn.functional as F

from core.config import SimilarityFilterConfig  # settings live with the other settings (no torch to read them)

COMPARE_SIZE = 32  # side of the pooled copy the cosine is computed on


def skip_probability(cosine: float, threshold: float) -> float:
    """Probability of skipping a frame whose cosine similarity to the last processed one is `cosine`."""
    return min(1.0, max(0.0, (cosine - threshold) / (1.0 - threshold)))


def pooled_signature(images: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) or (C, H, W) images -> flat float32 vector of their average-pooled (<=32x32) copy."""
    batch = images.detach().float()
    if batch.dim() == 3:
        batch = batch.unsqueeze(0)  # (1, C, H, W)
    height, width = batch.shape[-2:]
    if height > COMPARE_SIZE or width > COMPARE_SIZE:
        batch = F.adaptive_avg_pool2d(batch, (min(height, COMPARE_SIZE), min(width, COMPARE_SIZE)))
    return batch.reshape(-1).cpu()


class SimilarityFilter:
    """Decides, frame by frame, whether inference may be skipped; counts what it saved.

    Not thread-safe by design: it lives on the inference thread. `set_enabled` only flips a flag and may be
    called from elsewhere, but the service applies it between frames anyway.
    """

    def __init__(self, config: SimilarityFilterConfig) -> None:
        self.config = config
        self.enabled = config.enabled
        self._rng = random.Random(config.seed)  # its own stream: skips are reproducible from the seed
        self._reference: torch.Tensor | None = None  # signature of the last processed input
        self._reference_images: torch.Tensor | None = None  # ...or that input itself, not pooled yet (disabled)
        self.processed = 0
        self.skipped = 0
        self.skip_streak = 0
        self.last_cosine: float | None = None

    @property
    def skip_rate(self) -> float:
        """Fraction of all frames seen that were skipped (0.0 before the first frame)."""
        seen = self.processed + self.skipped
        return self.skipped / seen if seen else 0.0

    def set_enabled(self, enabled: bool) -> None:
        """Turn skipping on or off at runtime; a disabled filter processes every frame."""
        self.enabled = enabled
        self.skip_streak = 0

    def reset(self) -> None:
        """Forget the reference so the next frame is processed (call it when the output must change although
        the input does not, e.g. after a prompt switch)."""
        self._reference = self._reference_images = None
        self.skip_streak = 0

    def should_skip(self, images: torch.Tensor) -> bool:
        """True if inference on `images` may be skipped; False means the caller processes it, and it becomes
        the new reference."""
        if not self.enabled:
            # Keep the last processed input, but pool it only if the filter is turned on again: a disabled
            # filter costs nothing per frame.
            self._reference, self._reference_images = None, images
            self.processed += 1
            self.skip_streak = 0
            return False
        signature = pooled_signature(images)
        if self._skip(signature):
            self.skipped += 1
            self.skip_streak += 1
            return True
        self._reference, self._reference_images = signature, None
        self.processed += 1
        self.skip_streak = 0
        return False

    def _current_reference(self) -> torch.Tensor | None:
        if self._reference is None and self._reference_images is not None:
            self._reference, self._reference_images = pooled_signature(self._reference_images), None
        return self._reference

    def _skip(self, signature: torch.Tensor) -> bool:
        reference = self._current_reference()
        if reference is None or reference.shape != signature.shape:
            self.last_cosine = None
            return False
        cosine = float(F.cosine_similarity(signature, reference, dim=0, eps=1e-8))
        self.last_cosine = cosine
        if self.skip_streak >= self.config.max_skip:
            return False
        probability = skip_probability(cosine, self.config.threshold)
        if probability <= 0.0:
            return False
        if probability >= 1.0:
            return True
        return self._rng.random() < probability
