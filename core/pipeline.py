"""`FramePipeline`: capture, inference and output on three threads joined by `LatestSlot`s.

    source --capture thread--> [input slot] --inference thread--> [output slot] --output thread--> sink

Three threads, because each stage waits on something different (the camera, the model, the display clock) and
none of them may hold up the others: a slow UNet must not make the camera buffer fill with stale frames, and a
virtual camera must keep receiving frames at its rate even while the model is late or still loading.

- A live source keeps only the newest frame (older unread ones are counted as `dropped`); a non-live source
  (file, generator) is read one frame ahead with backpressure, so nothing is lost and the order is kept.
- A paced sink (`fps` set) is written exactly on a clock (`core.pacing.FramePacer`, the sink's own if it has
  one): deadlines advance by 1/fps and the thread sleeps only the remainder; when no new frame is ready the last
  one is repeated; when far behind the clock is resynced instead of bursting. An unpaced sink (`fps` None) gets every produced frame exactly once, in order.
- `between_frames` runs on the inference thread before each processor call: the service applies its queued
  commands there, so a command never lands in the middle of a UNet call. `set_processor` swaps the processor at
  the same boundary (pass-through or loading card while the model loads, then the diffusion processor); in front of
  a live output the model's first call runs beside the pass-through, so the picture never freezes while it runs
  (`core.processor_swap`), and commands wait for it.
- An exception in any stage is kept in `error` (with `error_stage`) and ends the run; `stop()` then joins the
  threads and closes the source and sink. A paced sink keeps getting the last frame until `stop()`.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from core.frame_io import FrameProcessor, FrameSink, FrameSource
from core.pacing import FramePacer
from core.processor_swap import ProcessorSwap, is_placeholder
from core.slots import LatestSlot
from core.stats import PipelineMeters, PipelineStats
from core.thread_priority import lower_this_threads_priority

POLL_SECONDS = 0.05  # how often blocked threads look at the stop flag
STOP_GRACE_SECONDS = 0.5  # stop() lets a stage finish its read / write this long before closing under it


@dataclass(frozen=True)
class PipelineConfig:
    """`max_frames`: end after this many frames came out of inference, placeholder frames (a loading card) not
    counted (None: until the source ends or stop);
    `stats_window`: how many recent samples the timing percentiles cover."""

    max_frames: int | None = None
    stats_window: int = 512

    def __post_init__(self) -> None:
        if self.max_frames is not None and self.max_frames < 1:
            raise ValueError(f"max_frames must be at least 1 or None, got {self.max_frames}")


@dataclass(frozen=True)
class _Frame:
    """A frame on its way through, with the time it was captured (for latency)."""

    image: np.ndarray
    captured_at: float
    result: bool = False  # made by a real processor (not a placeholder's pass-through while the model loads)


class FramePipeline:
    """Runs source -> processor -> sink on three threads; see the module docstring for the behaviour."""

    def __init__(
        self,
        source: FrameSource,
        processor: FrameProcessor,
        sink: FrameSink,
        config: PipelineConfig = PipelineConfig(),
        between_frames: Callable[[], None] | None = None,
        result_written: threading.Event | None = None,
    ) -> None:
        self.source = source
        # Set just before the output writes its first frame made by a real processor (not a placeholder's
        # pass-through): what "first stylised frame" means. Pass one in to wait on it from outside.
        self.result_written = result_written if result_written is not None else threading.Event()
        self.sink = sink
        self.config = config
        self.between_frames = between_frames
        self.error: BaseException | None = None
        self.error_stage: str | None = None
        self.released_after: float | None = None  # seconds from stop() until the source and sink were closed
        self._swap = ProcessorSwap(processor, overlap_first_call=sink.fps is not None)
        self._call_started_at: float | None = None  # monotonic start of the processor call in flight
        self._newest_passed: _Frame | None = None  # the card's newest frame while a first call runs beside it
        self._carried: _Frame | None = None  # ...which the model's next call takes first
        self._input: LatestSlot[_Frame] = LatestSlot(1)
        self._output: LatestSlot[_Frame] = LatestSlot(max(1, processor.frames_per_call))
        self._halt = threading.Event()  # capture and inference stop (end, max_frames, error, stop)
        self._stop = threading.Event()  # everything stops, the output thread too
        self._finished = threading.Event()  # what wait() waits for
        self._threads: list[threading.Thread] = []
        self._closed: set[str] = set()
        self._counters_lock = threading.Lock()
        self._frames_in = self._consumed = self._processed = self._written = self._repeated = 0
        self._results = 0  # processed by a processor that is not a placeholder
        self._pacer: FramePacer | None = None  # the output's clock, for a paced sink
        self._meters = PipelineMeters(config.stats_window)

    # -- control -----------------------------------------------------------------------------------------

    @property
    def processor(self) -> FrameProcessor:
        return self._swap.current

    def set_processor(self, processor: FrameProcessor) -> None:
        """Use `processor` from the next frame boundary on (the current call finishes with the old one)."""
        self._swap.request(processor)

    def start(self) -> None:
        if self._threads:
            raise RuntimeError("a FramePipeline can be started once; build a new one to run again")
        stages = (("capture", self._capture_loop), ("inference", self._inference_loop), ("output", self._output_loop))
        self._threads = [
            threading.Thread(target=self._run_stage, args=(name, loop), name=f"vcam-{name}", daemon=True)
            for name, loop in stages
        ]
        for thread in self._threads:
            thread.start()

    def __enter__(self) -> FramePipeline:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until max_frames came out, the source ended and its frames were written, an error, or stop.
        True if finished, False on timeout."""
        return self._finished.wait(timeout)

    def stop(self, timeout: float = 2.0) -> bool:
        """Stop every thread and close the source and sink within `timeout`; True if all threads joined.

        Threads get a short grace (a camera read or a frame write takes milliseconds) to leave on their own; then
        the source and sink are closed under them, which is what unblocks a read or write that is stuck (a camera
        that stopped delivering, a full pipe).
        """
        deadline = time.monotonic() + timeout
        self._halt.set()
        self._stop.set()
        self._input.close()
        self._output.close()
        self._join_until(time.monotonic() + min(timeout / 2, STOP_GRACE_SECONDS))
        self._close_once("capture", self.source.close)
        self._close_once("output", self.sink.close)
        self.released_after = time.monotonic() - (deadline - timeout)  # source and sink closed: devices free
        self._join_until(deadline)
        self._finished.set()
        return not any(thread.is_alive() for thread in self._threads)

    def seconds_into_call(self) -> float | None:
        """How long the processor call in flight has run, in seconds; None between calls. (A stop reports it: a
        call into the model cannot be interrupted, see `join`.)"""
        first = self._swap.first_call
        started = first.started_at if first is not None and not first.finished else self._call_started_at
        return None if started is None else time.monotonic() - started

    def join(self, timeout: float | None = None) -> bool:
        """After `stop()`: wait up to `timeout` seconds (None: no limit) for every stage thread to end; True if all
        did. The inference thread ends only once the processor call in flight returns: a call into the model
        (a torch or ONNX Runtime op) cannot be interrupted, and a process must not exit while a thread is inside
        one (torch aborts with `terminate called without an active exception`)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in self._threads if thread is not threading.current_thread())

    def stats(self) -> PipelineStats:
        with self._counters_lock:
            frames_in, consumed, processed, results = self._frames_in, self._consumed, self._processed, self._results
            written, repeated = self._written, self._repeated
            resyncs = self._pacer.resyncs if self._pacer is not None else 0
        skipped = self._swap.skipped()
        dropped = self._input.dropped
        return PipelineStats(
            frames_in=frames_in, consumed=consumed, processed=processed, results=results, written=written,
            repeated=repeated, dropped=dropped, output_dropped=self._output.dropped,
            pending=max(0, frames_in - consumed - dropped),  # the slot counts apart: may lag by one frame
            skipped=skipped, resyncs=resyncs, **self._meters.readings(),
        )

    # -- the three stages ----------------------------------------------------------------------------------

    def _run_stage(self, name: str, loop: Callable[[], None]) -> None:
        try:
            loop()
        except BaseException as error:  # noqa: BLE001 - any failure of a stage ends the run and is reported
            self._record_error(name, error)
            self._halt.set()
            self._input.close()
            self._output.close()
            if name == "output":
                self._stop.set()
            self._finished.set()

    def _record_error(self, stage: str, error: BaseException) -> None:
        with self._counters_lock:
            if self.error is None:
                self.error, self.error_stage = error, stage

    def _capture_loop(self) -> None:
        lower_this_threads_priority()
        limit = None if self.source.live else self.config.max_frames  # a file is read no further than needed
        while not self._halt.is_set() and (limit is None or self._frames_in < limit):
            started = time.monotonic()
            image = self.source.read()
            if image is None or self._halt.is_set():
                break
            captured_at = time.monotonic()
            self._meters.capture.add(captured_at - started)
            frame = _Frame(image, captured_at)
            with self._counters_lock:
                self._frames_in += 1
            if self.source.live:
                self._input.put(frame)
            elif not self._input.put_wait(frame):
                with self._counters_lock:  # refused by a closed slot: it never entered the pipeline
                    self._frames_in -= 1
                break
        self._input.close()  # end of stream travels down: inference drains what is left, then ends

    def _inference_loop(self) -> None:
        try:
            while not self._halt.is_set() and not self._reached_max_frames():
                first = self._swap.first_call
                if first is not None and first.finished:
                    self._take_first_call()
                    continue
                if first is None and self.between_frames is not None:  # never while a model call runs beside
                    self.between_frames()
                processor = self._swap.next_call()
                frames = self._gather(processor.frames_per_call)
                if not frames:
                    if self._swap.first_call is not None:
                        self._take_first_call()
                    processor = self._swap.current
                    if not self._halt.is_set() and hasattr(processor, "flush"):  # the source ended: drain
                        self._emit(processor, processor.flush(), None)
                    break
                if processor is not self._swap.current:  # a new processor's first call, beside the placeholder
                    self._swap.start_first_call(processor, self._padded(processor, frames), frames)
                    continue
                self._run_processor(processor, frames)
                if self._swap.first_call is not None:
                    self._newest_passed = frames[-1]
        finally:
            self._halt.set()  # a live camera is read no longer than inference runs
            self._input.close()
            self._output.close()
            if self._swap.first_call is not None:  # this thread ends once the model call beside it returned
                self._swap.first_call.wait()  # (its error, if any, comes second to the one ending this loop)

    def _output_loop(self) -> None:
        if self.sink.fps is None:
            self._write_each_once()
        else:
            self._write_paced()

    # -- inference helpers ---------------------------------------------------------------------------------

    def _reached_max_frames(self) -> bool:
        return self.config.max_frames is not None and self._results >= self.config.max_frames

    def _take_first_call(self) -> None:
        first, outputs = self._swap.take_first_call()
        self._output.set_capacity(max(1, first.processor.frames_per_call))
        self._meters.inference.add(first.seconds)
        self._emit(first.processor, outputs[:len(first.frames)], first.frames)
        # The model's next call starts at once on the newest frame the card showed (not yet the model's): waiting
        # for the camera's next one instead would leave the model idle for up to a frame period.
        self._carried, self._newest_passed = self._newest_passed, None

    def _gather(self, count: int) -> list[_Frame]:
        """Up to `count` frames; fewer only at the end of the stream or on stop (empty: nothing left)."""
        frames = [self._carried] if self._carried is not None and count > 0 else []
        self._carried = None
        while len(frames) < count and not self._halt.is_set():
            frame = self._input.get(POLL_SECONDS)
            if frame is not None:
                frames.append(frame)
                with self._counters_lock:
                    self._consumed += 1
            elif self._input.closed and not len(self._input):
                break
        return frames

    def _run_processor(self, processor: FrameProcessor, frames: list[_Frame]) -> None:
        started = self._call_started_at = time.monotonic()
        try:
            outputs = processor.process(self._padded(processor, frames))
        finally:
            self._call_started_at = None
        self._meters.inference.add(time.monotonic() - started)
        self._emit(processor, outputs[:len(frames)], frames)

    @staticmethod
    def _padded(processor: FrameProcessor, frames: list[_Frame]) -> list[np.ndarray]:
        """The images of `frames`; a short last batch is padded with its last frame (those outputs are discarded)."""
        images = [frame.image for frame in frames]
        return images + [images[-1]] * (processor.frames_per_call - len(images))

    def _emit(self, processor: FrameProcessor, outputs: list[np.ndarray], frames: list[_Frame] | None) -> None:
        """Hand `outputs` to the output stage, up to max_frames; `frames` gives their capture times (None for a
        flush: the frames that went in earlier, so their latency is not measured)."""
        counts = not is_placeholder(processor)
        if counts and self.config.max_frames is not None:
            outputs = outputs[:max(0, self.config.max_frames - self._results)]
        if outputs:  # one tick per call: its F frames came out at one instant
            self._meters.processed_rate.tick(events=len(outputs))
            if counts:
                self._meters.result_rate.tick(events=len(outputs))
        for index, image in enumerate(outputs):
            captured_at = frames[min(index, len(frames) - 1)].captured_at if frames else float("nan")
            produced = _Frame(image, captured_at, result=counts)
            with self._counters_lock:
                self._processed += 1
                self._results += counts
            if self.sink.fps is None:
                if not self._output.put_wait(produced):
                    return
            else:
                self._output.put(produced)

    # -- output helpers ------------------------------------------------------------------------------------

    def _write_each_once(self) -> None:
        while not self._stop.is_set():
            frame = self._output.get(POLL_SECONDS)
            if frame is not None:
                self._write(frame, first_time=True)
            elif self._output.closed and not len(self._output):
                break
        self._finished.set()

    def _write_paced(self) -> None:
        # One clock per output: a sink that paces its own writes lends its pacer (its write then waits on it at no
        # cost and counts the frame sent); any other paced sink gets one here.
        sink_pacer = getattr(self.sink, "pacer", None)
        pacer = self._pacer = sink_pacer or FramePacer(self.sink.fps, interrupt=self._stop)
        last = self._output.get(POLL_SECONDS)
        while last is None and not self._stop.is_set():
            if self._output.closed and not len(self._output):
                self._finished.set()  # ended before producing anything: nothing to show
            last = self._output.get(POLL_SECONDS)
        if last is None:
            return
        self._write(last, first_time=True)
        if sink_pacer is None:
            pacer.sent()
        while not self._stop.is_set():
            if not pacer.wait(self._stop):
                break
            fresh = self._output.get(0)
            if fresh is not None:
                last = fresh
            elif self._output.closed:
                self._finished.set()  # every produced frame was shown; keep the last one up until stop
            self._write(last, first_time=fresh is not None)
            if sink_pacer is None:
                pacer.sent()

    def _write(self, frame: _Frame, first_time: bool) -> None:
        if frame.result and not self.result_written.is_set():
            self.result_written.set()
        started = time.monotonic()
        self.sink.write(frame.image)
        written_at = time.monotonic()
        self._meters.output.add(written_at - started)
        self._meters.written_rate.tick(written_at)
        with self._counters_lock:
            if first_time:
                self._written += 1
            else:
                self._repeated += 1
        if first_time and frame.captured_at == frame.captured_at:  # not NaN: a flushed frame has no capture time
            self._meters.latency.add(written_at - frame.captured_at)

    # -- shutdown helpers ----------------------------------------------------------------------------------

    def _join_until(self, deadline: float) -> None:
        for thread in self._threads:
            if thread is not threading.current_thread():  # stop() called from a stage (e.g. the hook)
                thread.join(max(0.0, deadline - time.monotonic()))

    def _close_once(self, stage: str, close: Callable[[], None]) -> None:
        if stage in self._closed:
            return
        self._closed.add(stage)
        try:
            close()
        except Exception as error:  # noqa: BLE001 - a failing close must not keep the other one open
            self._record_error(f"{stage} close", error)
