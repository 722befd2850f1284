"""Specification of the one frame clock (`core.pacing.FramePacer`) that every live source and output runs on.

The clock is read through the pacer's `clock` argument, so these specs set the time by hand instead of sleeping.
"""
from __future__ import annotations

import threading

import pytest

from core.pacing import RESYNC_PERIODS, FramePacer


class HandClock:
    """Seconds set by the test."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_first_frame_is_due_at_once_and_the_next_one_period_after_it():
    clock = HandClock()
    pacer = FramePacer(50, clock=clock)
    assert pacer.delay() == 0.0
    pacer.sent()
    assert pacer.delay() == pytest.approx(0.02)
    clock.now += 0.015
    assert pacer.delay() == pytest.approx(0.005)


def test_deadlines_advance_by_one_period_so_small_delays_do_not_drift():
    clock = HandClock()
    pacer = FramePacer(50, clock=clock)
    pacer.sent()
    clock.now += 0.025  # this frame went out 5 ms late
    pacer.sent()
    assert pacer.delay() == pytest.approx(0.015), "due one period after the late frame was due, not after it went"


def test_a_lag_within_the_resync_limit_is_caught_up_without_waiting():
    clock = HandClock()
    pacer = FramePacer(50, clock=clock)
    pacer.sent()
    clock.now += 0.065  # the second frame goes out 45 ms late (2.25 periods, within the limit)
    pacer.sent()
    owed = 0
    while pacer.delay() == 0.0:  # the frames due at +40 ms and +60 ms are owed now
        pacer.sent()
        owed += 1
    assert owed == 2 and pacer.resyncs == 0
    assert RESYNC_PERIODS > 2.25


def test_after_a_stall_longer_than_the_resync_limit_the_clock_restarts_one_period_from_now():
    clock = HandClock()
    pacer = FramePacer(50, clock=clock)
    pacer.sent()
    clock.now += 0.3  # a stalled sink: 15 periods
    pacer.sent()
    assert pacer.resyncs == 1
    assert pacer.delay() == pytest.approx(0.02), "the frames owed during the stall are not sent in a burst"


def test_wait_does_not_consume_the_frame_so_a_sink_may_wait_again_at_no_cost():
    clock = HandClock()
    pacer = FramePacer(50, clock=clock)
    pacer.sent()
    clock.now += 0.02
    assert pacer.wait() is True and pacer.wait() is True, "the frame is due: neither wait sleeps"
    assert pacer.delay() == 0.0
    pacer.sent()
    assert pacer.delay() == pytest.approx(0.02), "only sent() moves the clock on"


def test_an_interrupt_ends_the_wait_and_every_later_one():
    stop = threading.Event()
    pacer = FramePacer(0.01, interrupt=stop)  # a frame every 100 s
    pacer.sent()
    threading.Timer(0.05, stop.set).start()
    assert pacer.wait() is False
    assert pacer.tick() is False
    other = threading.Event()
    other.set()
    assert FramePacer(10).wait(other) is False, "a caller's own event interrupts too"


def test_reset_makes_the_next_frame_due_at_once():
    pacer = FramePacer(0.01)
    pacer.sent()
    pacer.reset()
    assert pacer.delay() == 0.0


def test_fps_must_be_positive():
    with pytest.raises(ValueError, match="fps must be positive"):
        FramePacer(0)
