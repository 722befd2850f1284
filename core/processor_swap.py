"""`ProcessorSwap`: which processor makes the pipeline's next call, and a new processor's first call.

`FramePipeline.set_processor` may be called from any thread (the model loader); the swap happens on the inference
thread between two calls. One case is special. While the model loads, a live output shows the camera through a
placeholder (a pass-through with a "loading" card); the model's first call then still takes a whole model call
(seconds at 512x512 on a CPU), and swapping at once would hold the output on the last pass-through frame for that
long: the picture would freeze just before the first stylised frame. So when a real processor replaces a
placeholder in front of a live output, its first call runs on a thread of its own (`FirstCall`) while the
placeholder keeps passing frames through; once it returns, its outputs are shown and it takes over.
"""
from __future__ import annotations

import threading
import time
from typing import Generic, TypeVar

import numpy as np

from core.frame_io import FrameProcessor

F = TypeVar("F")  # what the pipeline carries with each frame (its capture time)


def is_placeholder(processor: FrameProcessor) -> bool:
    """A loading card or pass-through: its frames are not the model's."""
    return bool(getattr(processor, "placeholder", False))


def skipped_by(processor: FrameProcessor) -> int:
    """How many frames the processor has skipped so far (0 if it does not say)."""
    return int(getattr(processor, "skipped", 0))


class FirstCall(Generic[F]):
    """`processor.process(images)` on a thread of its own; `frames` go back to the pipeline with the outputs."""

    def __init__(self, processor: FrameProcessor, images: list[np.ndarray], frames: list[F]) -> None:
        self.processor = processor
        self.frames = frames
        self.started_at = time.monotonic()
        self.seconds = 0.0  # how long the call took, once finished
        self._outputs: list[np.ndarray] = []
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._call, args=(images,), name="vcam-first-call", daemon=True)

    def start(self) -> None:
        self.started_at = time.monotonic()
        self._thread.start()

    @property
    def finished(self) -> bool:
        return self._thread.ident is not None and not self._thread.is_alive()

    def wait(self) -> None:
        """Until the call returns (a model call cannot be interrupted)."""
        self._thread.join()

    def result(self) -> list[np.ndarray]:
        """The call's outputs, waiting for it if needed; raises its error."""
        self.wait()
        if self._error is not None:
            raise self._error
        return self._outputs

    def _call(self, images: list[np.ndarray]) -> None:
        try:
            self._outputs = self.processor.process(images)
        except BaseException as error:  # noqa: BLE001 - raised again on the inference thread by result()
            self._error = error
        finally:
            self.seconds = time.monotonic() - self.started_at


class ProcessorSwap:
    """The current processor, the one handed in to replace it, and the skip count across swaps.

    `overlap_first_call`: run a real processor's first call beside the placeholder it replaces (a live output);
    otherwise every swap is immediate (an offline output keeps its frames in order)."""

    def __init__(self, processor: FrameProcessor, overlap_first_call: bool) -> None:
        self.current = processor
        self.first_call: FirstCall | None = None  # a new processor's first call in flight (or finished, not taken)
        self._overlap_first_call = overlap_first_call
        self._incoming: FrameProcessor | None = None
        self._lock = threading.Lock()  # guards _incoming (any thread) and the skip counts (stats on any thread)
        self._skipped_before = 0  # skips counted by processors swapped out (or in again) earlier
        self._skipped_at_swap_in = skipped_by(processor)

    def request(self, processor: FrameProcessor) -> None:
        """Any thread: use `processor` from the next frame boundary on."""
        with self._lock:
            self._incoming = processor

    def skipped(self) -> int:
        with self._lock:
            return self._skipped_before + skipped_by(self.current) - self._skipped_at_swap_in

    def next_call(self) -> FrameProcessor:
        """Inference thread, between calls: the processor for the next call. One that differs from `current` is
        a new processor whose first call should start beside the placeholder (`start_first_call`)."""
        if self.first_call is not None:
            return self.current  # one swap at a time: a later request waits for this first call
        with self._lock:
            incoming, self._incoming = self._incoming, None
        if incoming is None:
            return self.current
        if self._overlap_first_call and is_placeholder(self.current) and not is_placeholder(incoming):
            return incoming
        self._swap_in(incoming)
        return incoming

    def start_first_call(self, processor: FrameProcessor, images: list[np.ndarray], frames: list) -> None:
        self.first_call = FirstCall(processor, images, frames)
        self.first_call.start()  # after it is in place: the call may be asked about as soon as it runs

    def take_first_call(self) -> tuple[FirstCall, list[np.ndarray]]:
        """The finished (or, at the end of the stream, waited-for) first call and its outputs; its processor
        becomes current. Its error is raised here, on the inference thread."""
        first, self.first_call = self.first_call, None
        assert first is not None
        outputs = first.result()
        self._swap_in(first.processor)
        return first, outputs

    def _swap_in(self, incoming: FrameProcessor) -> None:
        with self._lock:
            self._skipped_before += skipped_by(self.current) - self._skipped_at_swap_in
            self._skipped_at_swap_in = skipped_by(incoming)
            self.current = incoming
