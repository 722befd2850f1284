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

    The rate is (events - 1) / the time they span, always over at least the last two events, so a slow stream
    (fewer than one event per window) still reads its true rate instead of 0. Once the gap since the last event
    outgrows the mean interval, that excess counts as time spanned: a stream that stalls reads a rate that falls
    with the stall instead of the stale rate of its last window. 0.0 until two events.
    """

    def __init__(self, window_seconds: float = 2.0) -> None:
        self._window = window_seconds
        self._times: deque[float] = deque()
        self._lock = threading.Lock()

    def tick(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            self._times.append(now)
            while len(self._times) > 2 and now - self._times[0] > self._window:
                self._times.popleft()

    def rate(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        with self._lock:
            times = [t for t in self._times if now - t <= self._window] if len(self._times) > 2 else []
            times = times if len(times) >= 2 else list(self._times)[-2:]
        if len(times) < 2:
            return 0.0
        intervals = len(times) - 1
        span = times[-1] - times[0]
        stalled = max(0.0, (now - times[-1]) - span / intervals)  # the open gap beyond one mean interval
        return intervals / (span + stalled) if span + stalled > 0 else 0.0

    def idle_seconds(self, now: float | None = None) -> float | None:
        """Seconds since the last event; None before the first."""
        now = time.monotonic() if now is None else now
        with self._lock:
            return now - self._times[-1] if self._times else None


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
    fps: float  # frames out of inference per second, recent window
    output_fps: float  # sink writes per second (repeats included), recent window

    @property
    def latency_ms_p50(self) -> float:
        return self.latency_ms.p50

    @property
    def latency_ms_p95(self) -> float:
        return self.latency_ms.p95

    def as_dict(self) -> dict[str, object]:
        return asdict(self)
