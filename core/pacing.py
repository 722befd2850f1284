"""`FramePacer`: the one clock every live output and every live source runs on.

A deadline clock, so that small delays do not add up to drift: each frame is due one period after the previous
one was due, not one period after it went out. The rule after a stall is the same everywhere: a loop further behind
than `RESYNC_PERIODS` periods (a stalled sink, a busy machine) restarts its clock one period from now instead of
sending the frames it owes in a burst; smaller lags are caught up. (The pacing of pyvirtualcam's
`sleep_until_next_frame`, as a deadline rather than a moving average, so one clock can serve a whole pipeline.)
"""
from __future__ import annotations

import threading
import time
from typing import Callable

RESYNC_PERIODS = 3.0  # further behind than this many periods: restart the clock instead of bursting


class FramePacer:
    """Holds a loop to `fps` frames per second: `wait()` until the next frame is due, send it, then `sent()`.

    `wait()` does not consume the frame's slot, so a loop may wait on the clock before choosing what to send and
    the sink that sends it may wait again at no cost (the virtual camera guards its own rate this way when written
    directly, and shares its pacer with the pipeline's output thread, so its stream has one clock, not two).
    `tick()` is both, for a source that produces its frame right after the wait. The first frame is due at once.
    A wait ends early, returning False, when the `interrupt` event is set (closing a source or stopping a pipeline
    never waits out a long frame period). `resyncs` counts the restarts after a stall.
    """

    def __init__(self, fps: float, interrupt: threading.Event | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        """`clock`: seconds, monotonic. Raises ValueError if `fps` is not positive."""
        if not fps > 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.period = 1.0 / fps  # seconds
        self.interrupt = interrupt or threading.Event()
        self.resyncs = 0
        self._clock = clock
        self._next_due: float | None = None  # clock seconds; None: the clock starts at the next frame

    def wait(self, interrupt: threading.Event | None = None) -> bool:
        """Sleep until the next frame is due (at once if it is, or if no frame went out yet). False if `interrupt`
        (default: the pacer's own) was set before or during the wait."""
        event = interrupt or self.interrupt
        delay = self.delay()
        if delay > 0:
            return not event.wait(delay)
        return not event.is_set()

    def delay(self) -> float:
        """Seconds until the next frame is due; 0 when it is due already (or no frame went out yet)."""
        return 0.0 if self._next_due is None else max(0.0, self._next_due - self._clock())

    def sent(self) -> None:
        """A frame went out: the next is due one period after this one was due, or one period from now after
        falling more than RESYNC_PERIODS behind."""
        now = self._clock()
        if self._next_due is None:
            self._next_due = now + self.period
            return
        self._next_due += self.period
        if now - self._next_due > RESYNC_PERIODS * self.period:
            self._next_due = now + self.period
            self.resyncs += 1

    def tick(self) -> bool:
        """`wait()` then `sent()`: for a loop that makes its frame right after the wait. False if interrupted."""
        if not self.wait():
            return False
        self.sent()
        return True

    def reset(self) -> None:
        """Restart the clock: the next frame is due at once (a source that lost its device starts a new stream)."""
        self._next_due = None
