"""Rolling statistics over a bounded window: what the pipeline and the benchmark report.

A mean alone hides the stutters a viewer notices, so every timing is summarised as mean, median and 95th
percentile. The window is bounded so a service running for days uses constant memory and reports the recent
behaviour, not the warm-up of an hour ago.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Summary:
    """Mean, median and 95th percentile of the values in the window; `count` is all values ever added."""

    count: int
    mean: float
    p50: float
    p95: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)

    def scaled(self, factor: float) -> Summary:
        """The same summary in other units (e.g. factor 1000 for seconds -> milliseconds)."""
        return Summary(self.count, self.mean * factor, self.p50 * factor, self.p95 * factor)


class RollingStats:
    """Keeps the last `window` values; one thread may add while another reads a summary."""

    def __init__(self, window: int = 512) -> None:
        if window < 1:
            raise ValueError(f"window must be at least 1, got {window}")
        self._values: deque[float] = deque(maxlen=window)
        self._count = 0
        self._lock = threading.Lock()

    def add(self, value: float) -> None:
        with self._lock:
            self._values.append(float(value))
            self._count += 1

    @property
    def count(self) -> int:
        return self._count

    def percentile(self, q: float) -> float:
        """The q-th percentile (0..100, linear interpolation) of the window; NaN when empty."""
        with self._lock:
            values = np.array(self._values, dtype=np.float64)
        return float(np.percentile(values, q)) if values.size else float("nan")

    def summary(self) -> Summary:
        with self._lock:
            values = np.array(self._values, dtype=np.float64)
            count = self._count
        if not values.size:
            return Summary(count, float("nan"), float("nan"), float("nan"))
        p50, p95 = np.percentile(values, [50, 95])
        return Summary(count, float(values.mean()), float(p50), float(p95))


class RateMeter:
    """Events per second, time-weighted over the last `window_seconds` (e.g. frames produced).

    A tick may carry several events at one instant (a model call that returns F frames), so a stream of bursts
    reads its true rate: the events after the first tick in the window, over the time the ticks span. It is taken
    over at least the last two ticks, so a slow stream (fewer than one tick per window) still reads its true rate
    instead of 0. Once the gap since the last tick outgrows the mean interval between ticks, that excess counts as
    time spanned: a stream that stalls reads a rate that falls with the stall instead of the stale rate of its
    last window. 0.0 until two ticks (`measured` says when there are).
    """

    def __init__(self, window_seconds: float = 2.0) -> None:
        self._window = window_seconds
        self._ticks: deque[tuple[float, int]] = deque()  # (time, events at that time)
        self._lock = threading.Lock()

    def tick(self, now: float | None = None, events: int = 1) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            self._ticks.append((now, events))
            while len(self._ticks) > 2 and now - self._ticks[0][0] > self._window:
                self._ticks.popleft()

    @property
    def measured(self) -> bool:
        """True from the second tick on: before it there is no rate to read, only a start."""
        return len(self._ticks) >= 2

    def rate(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        with self._lock:
            ticks = [t for t in self._ticks if now - t[0] <= self._window] if len(self._ticks) > 2 else []
            ticks = ticks if len(ticks) >= 2 else list(self._ticks)[-2:]
        if len(ticks) < 2:
            return 0.0
        events = sum(count for _, count in ticks[1:])  # the first tick only starts the clock
        span = ticks[-1][0] - ticks[0][0]
        stalled = max(0.0, (now - ticks[-1][0]) - span / (len(ticks) - 1))  # the open gap beyond one mean interval
        return events / (span + stalled) if span + stalled > 0 else 0.0

    def idle_seconds(self, now: float | None = None) -> float | None:
        """Seconds since the last tick; None before the first."""
        now = time.monotonic() if now is None else now
        with self._lock:
            return now - self._ticks[-1][0] if self._ticks else None


@dataclass(frozen=True)
class PipelineStats:
    """A snapshot of the counters. frames_in == consumed + dropped + pending at every instant; times in ms."""

    frames_in: int  # read from the source
    consumed: int  # taken by the inference thread
    processed: int  # came out of inference
    results: int  # came out of a processor that is not a placeholder (what max_frames counts)
    written: int  # produced frames written to the sink (first time)
    repeated: int  # paced repeats of the last frame while inference was late
    dropped: int  # input frames replaced before inference took them
    output_dropped: int  # produced frames replaced before a paced sink showed them
    pending: int  # read but neither consumed nor dropped yet
    skipped: int  # frames whose inference the processor skipped (similarity filter)
    resyncs: int  # times the paced output fell too far behind and restarted its clock
    capture_ms: Summary  # per source.read()
    inference_ms: Summary  # per processor call (frames_per_call frames)
    output_ms: Summary  # per sink.write()
    latency_ms: Summary  # capture -> written, per produced frame
    fps: float  # frames out of inference per second, recent window (a loading card's frames included)
    result_fps: float | None  # frames out of a real processor (the model) per second, recent window; None until
    # two of its calls gave frames
    output_fps: float  # sink writes per second (repeats included), recent window

    @property
    def latency_ms_p50(self) -> float:
        return self.latency_ms.p50

    @property
    def latency_ms_p95(self) -> float:
        return self.latency_ms.p95

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


class PipelineMeters:
    """The pipeline's timings (seconds) and rates, one of each, filled by its three threads."""

    def __init__(self, window: int) -> None:
        self.capture, self.inference, self.output, self.latency = (RollingStats(window) for _ in range(4))
        self.processed_rate = RateMeter()
        self.result_rate = RateMeter()  # only a real processor's frames: the model's rate, not the loading card's
        self.written_rate = RateMeter()

    def readings(self) -> dict[str, object]:
        """The timing and rate fields of `PipelineStats` (times in ms)."""
        return dict(
            capture_ms=self.capture.summary().scaled(1000), inference_ms=self.inference.summary().scaled(1000),
            output_ms=self.output.summary().scaled(1000), latency_ms=self.latency.summary().scaled(1000),
            fps=self.processed_rate.rate(),
            result_fps=self.result_rate.rate() if self.result_rate.measured else None,
            output_fps=self.written_rate.rate(),
        )
