"""Adapters between the frame pipeline (numpy RGB frames) and the diffusion stream (torch tensors).

The pipeline's `FrameProcessor` contract is "F uint8 frames in, F uint8 frames out"; the stream works on
(F, 3, H, W) float tensors at the model's resolution. Keeping the conversion here keeps `core` free of image
formats and the sinks free of tensors.
"""
from __future__ import annotations

import numpy as np
import torch

from core.stream import DiffusionStream
from vcam.framing import fit_frame
from vcam.overlay import notices_of, with_notices


def frames_to_tensor(frames: list[np.ndarray], width: int, height: int, fit: str) -> torch.Tensor:
    """F frames of any size -> (F, 3, height, width) float32 in [0, 1], cropped or letterboxed, never stretched."""
    fitted = np.stack([fit_frame(f, width, height, fit) for f in frames])  # (F, H, W, 3) uint8
    return torch.from_numpy(fitted).permute(0, 3, 1, 2).float().div_(255.0)


def carry_notices(outputs: list[np.ndarray], inputs: list[np.ndarray]) -> list[np.ndarray]:
    """`outputs`, each carrying the notice lines of the newest input ("camera lost" on the frozen last picture):
    the model works on the picture alone, and a notice says what is true now, not T-1 calls ago."""
    lines = notices_of(inputs[-1]) if inputs else ()
    return [with_notices(output, lines) for output in outputs] if lines else outputs


def tensor_to_frames(images: torch.Tensor) -> list[np.ndarray]:
    """(F, 3, H, W) in [0, 1] -> F uint8 RGB frames."""
    # numpy, not torch: a few element-wise passes over 256x256 pixels cost ~0.1 ms here, while torch would spread
    # them over its intra-op thread pool and wait on it (measured 2-10 ms on 2 cores).
    pixels = images.detach().float().cpu().numpy().transpose(0, 2, 3, 1)  # (F, H, W, 3) in [0, 1]
    return list(np.clip(pixels * 255.0 + 0.5, 0, 255).astype(np.uint8))


class DiffusionProcessor:
    """Runs each group of F frames through the diffusion stream; pass-through while paused.

    The stream batch gives back, at each call, the frames that entered T-1 calls earlier (StreamDiffusion's
    pipelined denoising: slot i holds a frame i steps along). Live, that latency is the price of the frame rate.
    `aligned=True` (a file being written) returns nothing for the first T-1 calls, whose outputs are the warm-up's
    grey, and `flush()` pushes the last frames through at the end: output frame k is stylised input frame k.
    """

    def __init__(self, stream: DiffusionStream, fit: str = "crop", aligned: bool = False) -> None:
        self.stream = stream
        self.fit = fit
        self.frames_per_call = stream.config.frame_buffer_size
        self.paused = False
        self.aligned = aligned
        self._inside = 0  # calls whose frames are still inside the stream batch (aligned only)
        self._last: list[np.ndarray] = []

    @property
    def placeholder(self) -> bool:
        """Paused, its frames are the camera's, not the model's: they count neither as stylised frames
        (`--frames N`) nor toward the model's rate (see `core.frame_io.FrameProcessor`)."""
        return self.paused

    @property
    def skipped(self) -> int:
        filt = self.stream.similarity
        return int(filt.skipped) if filt is not None else 0

    def process(self, frames: list[np.ndarray]) -> list[np.ndarray]:
        if self.paused:
            return list(frames)
        cfg = self.stream.config
        images = frames_to_tensor(frames, cfg.width, cfg.height, self.fit)
        outputs = carry_notices(tensor_to_frames(self.stream.process(images)), frames)
        if not self.aligned or cfg.mode == "txt2img":
            return outputs
        self._last = list(frames)
        if self._inside < cfg.steps - 1:  # the output is a warm-up frame's: the input is still on its way
            self._inside += 1
            return []
        return outputs

    def flush(self) -> list[np.ndarray]:
        """Aligned: the frames still inside the stream batch, pushed out by repeating the last input."""
        outputs: list[np.ndarray] = []
        inside, self._inside = self._inside, 0
        cfg = self.stream.config
        for _ in range(inside if self._last else 0):
            images = frames_to_tensor(self._last, cfg.width, cfg.height, self.fit)
            outputs += carry_notices(tensor_to_frames(self.stream.process(images)), self._last)
        return outputs


class PassThroughProcessor:
    """What the virtual camera shows while the model loads: the camera as it is, with a notice. Its frames are
    placeholders: `--frames N` counts stylised frames (see `core.pipeline.FrameProcessor`)."""

    frames_per_call = 1
    skipped = 0
    placeholder = True

    def __init__(self, notice: str | None = "loading model...") -> None:
        self.notice = notice

    def process(self, frames: list[np.ndarray]) -> list[np.ndarray]:
        if not self.notice:
            return list(frames)
        # drawn by the sink, after fitting; a notice the frame already carries ("camera lost") is kept
        return [with_notices(frame, [*notices_of(frame), self.notice]) for frame in frames]
