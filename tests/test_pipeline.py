"""Specifications of the threaded frame pipeline (core/pipeline.py), its slots and its statistics.

The stages are small real components: sources that number their frames, a colour-inverting processor, sinks
that record what they were given and when. No model is needed to specify how frames move.
"""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from core.pipeline import FramePipeline, PipelineConfig
from core.slots import LatestSlot
from core.stats import RateMeter, RollingStats

pytestmark = pytest.mark.timeout(60)


def numbered(index: int) -> np.ndarray:
    """An 8x8 RGB frame that carries its index in its first pixel."""
    frame = np.full((8, 8, 3), 100, dtype=np.uint8)
    frame[0, 0, 0], frame[0, 0, 1] = index % 256, index // 256
    return frame


def is_inverted(frame: np.ndarray) -> bool:
    return bool(frame[1, 1, 0] == 255 - 100)


def number_of(frame: np.ndarray) -> int:
    return int(frame[0, 0, 0]) + 256 * int(frame[0, 0, 1])


class ListSource:
    """A file-like source: the frames 0..count-1, then the end of the stream."""

    live = False

    def __init__(self, count: int) -> None:
        self.frames = iter(range(count))
        self.closed = False

    def read(self) -> np.ndarray | None:
        index = next(self.frames, None)
        return None if index is None else numbered(index)

    def close(self) -> None:
        self.closed = True


class CameraSource:
    """A live source delivering numbered frames at `fps`, like a camera; close() ends a waiting read."""

    live = True

    def __init__(self, fps: float) -> None:
        self.period = 1.0 / fps
        self.index = 0
        self.next_at = time.monotonic()
        self.closing = threading.Event()
        self.closed = False

    def read(self) -> np.ndarray | None:
        if self.closing.wait(max(0.0, self.next_at - time.monotonic())):
            return None
        self.next_at += self.period
        self.index += 1
        return numbered(self.index - 1)

    def close(self) -> None:
        self.closing.set()
        self.closed = True


class ReleasedOnClose:
    """A stage stuck in a call until close(), as a real device stuck in a read or write is."""

    def __init__(self) -> None:
        self.released = threading.Event()
        self.closed = False

    def close(self) -> None:
        self.closed = True
        self.released.set()


class StuckSource(ReleasedOnClose):
    """A camera that stopped delivering: read() blocks until close()."""

    live = True

    def read(self) -> np.ndarray | None:
        self.released.wait()
        return None


class Inverter:
    """Inverts colours (so its output is recognisably its own), optionally slowly; logs its calls."""

    def __init__(self, frames_per_call: int = 1, seconds: float = 0.0, log: list | None = None, tag: str = "inv"):
        self.frames_per_call = frames_per_call
        self.seconds = seconds
        self.log = [] if log is None else log
        self.tag = tag
        self.started = threading.Event()

    def process(self, frames: list[np.ndarray]) -> list[np.ndarray]:
        assert len(frames) == self.frames_per_call
        self.started.set()
        self.log.append((self.tag, [number_of(frame) for frame in frames]))
        time.sleep(self.seconds)
        return [255 - frame for frame in frames]


class PassThrough:
    """Returns the frames unchanged; stands in for the pass-through shown while a model loads."""

    def __init__(self, frames_per_call: int = 1, log: list | None = None) -> None:
        self.frames_per_call = frames_per_call
        self.log = [] if log is None else log

    def process(self, frames: list[np.ndarray]) -> list[np.ndarray]:
        self.log.append(("pass", [number_of(frame) for frame in frames]))
        return list(frames)


class RecordingSink:
    """Keeps every frame written and when; `fps` None is a file-like sink, a number a virtual-camera-like one."""

    def __init__(self, fps: float | None = None, stall_at: int | None = None, stall_seconds: float = 0.0):
        self.fps = fps
        self.frames: list[np.ndarray] = []
        self.times: list[float] = []
        self.closed = False
        self.stall_at = stall_at
        self.stall_seconds = stall_seconds

    def write(self, frame: np.ndarray) -> None:
        if len(self.frames) == self.stall_at:
            time.sleep(self.stall_seconds)
        self.frames.append(frame.copy())
        self.times.append(time.monotonic())

    def close(self) -> None:
        self.closed = True


class StuckSink(ReleasedOnClose):
    """A sink whose write() blocks until close() (a full pipe, a hung virtual camera)."""

    fps = None

    def write(self, frame: np.ndarray) -> None:
        self.released.wait()


def run_to_end(pipeline: FramePipeline, timeout: float = 10.0) -> None:
    pipeline.start()
    assert pipeline.wait(timeout), "the pipeline did not finish"
    assert pipeline.stop() is True


def inverted_numbers(sink: RecordingSink) -> list[int]:
    return [number_of(255 - frame) for frame in sink.frames]


# -- the slots --------------------------------------------------------------------------------------------


def test_slot_put_replaces_an_unread_item_and_counts_it_dropped():
    slot: LatestSlot[int] = LatestSlot()
    slot.put(1)
    slot.put(2)
    assert slot.get(0) == 2
    slot.put(3)
    assert slot.get(0) == 3
    assert (slot.dropped, slot.put_count, slot.taken) == (1, 3, 2)


def test_slot_put_wait_waits_until_the_previous_item_was_taken():
    slot: LatestSlot[int] = LatestSlot()
    slot.put_wait(1)
    assert slot.put_wait(2, timeout=0.05) is False  # still full
    taker = threading.Timer(0.05, slot.get)
    taker.start()
    assert slot.put_wait(3, timeout=2.0) is True
    taker.join()
    assert slot.get(0) == 3 and slot.dropped == 0


def test_slot_get_times_out_and_close_wakes_a_waiting_reader_after_draining():
    slot: LatestSlot[str] = LatestSlot()
    started = time.monotonic()
    assert slot.get(0.05) is None and time.monotonic() - started >= 0.05
    slot.put("last")
    slot.close()
    assert slot.put("late") is False
    assert slot.get(1.0) == "last"  # what was put before the close is still delivered
    threading.Timer(0.05, slot.close).start()
    started = time.monotonic()
    assert slot.get(5.0) is None and time.monotonic() - started < 4.0  # woken by close, not the 5 s timeout


def test_slot_with_capacity_keeps_the_newest_items_in_order():
    slot: LatestSlot[int] = LatestSlot(capacity=2)
    for item in range(5):
        slot.put(item)
    assert [slot.get(0), slot.get(0), slot.get(0)] == [3, 4, None]
    assert slot.dropped == 3


# -- the statistics ---------------------------------------------------------------------------------------


def test_rolling_stats_summarise_only_the_recent_window():
    stats = RollingStats(window=100)
    for value in [1000.0] * 50 + list(range(1, 101)):
        stats.add(value)
    summary = stats.summary()
    assert summary.count == 150
    assert summary.mean == pytest.approx(50.5)
    assert summary.p50 == pytest.approx(50.5)
    assert summary.p95 == pytest.approx(95.05)
    assert np.isnan(RollingStats().summary().p95)


def test_rate_meter_counts_events_per_second_over_its_window():
    meter = RateMeter(window_seconds=1.0)
    for tick in range(31):
        meter.tick(100.0 + tick / 10)  # 10 per second for 3 seconds
    assert meter.rate(now=103.05) == pytest.approx(10.0)


def test_rate_meter_reads_a_stream_slower_than_its_window_at_its_true_rate():
    meter = RateMeter(window_seconds=2.0)
    for tick in range(5):
        meter.tick(100.0 + 3 * tick)  # one event every 3 s: fewer than one per window
    assert meter.rate(now=113.5) == pytest.approx(1 / 3)


def test_rate_meter_falls_during_a_stall_instead_of_showing_the_last_window():
    meter = RateMeter(window_seconds=2.0)
    for tick in range(51):
        meter.tick(100.0 + tick / 25)  # 25 per second, last event at 102.0
    assert meter.rate(now=102.02) == pytest.approx(25.0)
    assert meter.rate(now=104.0) < 1.0  # 2 s without an event: not "25 fps"
    assert meter.rate(now=112.0) < meter.rate(now=104.0)
    assert meter.idle_seconds(now=112.0) == pytest.approx(10.0)


def test_rate_meter_reads_a_stream_of_bursts_at_its_true_rate():
    meter = RateMeter(window_seconds=2.0)
    for call in range(9):
        meter.tick(100.0 + call / 4, events=2)  # a model call every 0.25 s giving two frames: 8 frames per second
    assert meter.rate(now=102.01) == pytest.approx(8.0)


def test_rate_meter_has_no_rate_until_its_second_tick():
    meter = RateMeter()
    assert not meter.measured
    meter.tick(100.0)
    assert not meter.measured and meter.rate(now=100.5) == 0.0
    meter.tick(101.0)
    assert meter.measured and meter.rate(now=101.0) == pytest.approx(1.0)


# -- the pipeline: sources -----------------------------------------------------------------------------------


def test_live_source_keeps_only_the_newest_frame_and_counts_drops():
    source, sink = CameraSource(fps=200), RecordingSink()
    pipeline = FramePipeline(source, Inverter(seconds=0.03), sink, PipelineConfig(max_frames=8))
    run_to_end(pipeline)
    numbers = inverted_numbers(sink)
    stats = pipeline.stats()
    assert len(numbers) == 8 and numbers == sorted(numbers)
    assert numbers[-1] - numbers[0] > 2 * 7, "a 30 ms processor on a 200 fps camera must skip ahead"
    assert stats.dropped > 0
    assert stats.frames_in == stats.consumed + stats.dropped + stats.pending


def test_non_live_source_loses_nothing_and_keeps_the_order():
    source, sink = ListSource(40), RecordingSink()
    pipeline = FramePipeline(source, Inverter(), sink, PipelineConfig())
    run_to_end(pipeline)
    assert inverted_numbers(sink) == list(range(40))
    stats = pipeline.stats()
    assert (stats.frames_in, stats.processed, stats.written, stats.dropped) == (40, 40, 40, 0)


def test_frames_are_gathered_per_call_and_a_short_last_batch_is_padded_then_trimmed():
    log: list = []
    sink = RecordingSink()
    run_to_end(FramePipeline(ListSource(7), Inverter(frames_per_call=3, log=log), sink, PipelineConfig()))
    assert [numbers for _, numbers in log] == [[0, 1, 2], [3, 4, 5], [6, 6, 6]]
    assert inverted_numbers(sink) == list(range(7))


def test_max_frames_ends_the_run_after_that_many_frames():
    source, sink = ListSource(100), RecordingSink()
    pipeline = FramePipeline(source, Inverter(frames_per_call=2), sink, PipelineConfig(max_frames=5))
    run_to_end(pipeline)
    assert inverted_numbers(sink) == [0, 1, 2, 3, 4]
    assert pipeline.stats().frames_in == 5


class DelayedInverter(Inverter):
    """Gives back each call's frames one call later, as a stream batch of two slots does, and flushes the last."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[np.ndarray] = []

    def process(self, frames: list[np.ndarray]) -> list[np.ndarray]:
        out, self.held = self.held, super().process(frames)
        return out

    def flush(self) -> list[np.ndarray]:
        out, self.held = self.held, []
        return out


def test_a_processor_that_holds_frames_back_is_flushed_when_the_source_ends():
    source, sink = ListSource(6), RecordingSink()
    run_to_end(FramePipeline(source, DelayedInverter(), sink))
    assert inverted_numbers(sink) == [0, 1, 2, 3, 4, 5]  # every frame, in order, the held-back last one too


def test_max_frames_counts_frames_that_come_out_held_back():
    source, sink = ListSource(100), RecordingSink()
    run_to_end(FramePipeline(source, DelayedInverter(), sink, PipelineConfig(max_frames=4)))
    assert inverted_numbers(sink) == [0, 1, 2, 3]


class LoadingCard(PassThrough):
    placeholder = True


def test_max_frames_does_not_count_the_placeholder_frames_shown_while_the_model_loads():
    source, sink, calls = CameraSource(fps=200), RecordingSink(), []  # a live output's source is live

    def model_ready_at_the_third_call() -> None:
        calls.append(len(calls))
        if len(calls) == 3:
            pipeline.set_processor(Inverter())

    pipeline = FramePipeline(source, LoadingCard(), sink, PipelineConfig(max_frames=3),
                             between_frames=model_ready_at_the_third_call)
    run_to_end(pipeline)
    assert [is_inverted(frame) for frame in sink.frames] == [False, False, True, True, True]
    assert (pipeline.stats().results, pipeline.stats().processed) == (3, 5)


def test_frames_a_paused_model_passes_through_count_neither_as_results_nor_toward_its_rate():
    # `--frames 20` with a pause ended early, saying "20 stylised frames" of which most were the camera's
    class Pausable(Inverter):
        paused = False

        @property
        def placeholder(self) -> bool:
            return self.paused

        def process(self, frames):
            return list(frames) if self.paused else super().process(frames)

    model, calls = Pausable(), []

    def pause_for_calls_three_to_six() -> None:
        calls.append(len(calls))
        model.paused = 3 <= len(calls) <= 6

    sink = RecordingSink()
    pipeline = FramePipeline(CameraSource(fps=200), model, sink, PipelineConfig(max_frames=4),
                             between_frames=pause_for_calls_three_to_six)
    run_to_end(pipeline)
    assert [is_inverted(frame) for frame in sink.frames] == [True, True, False, False, False, False, True, True]
    assert (pipeline.stats().results, pipeline.stats().processed) == (4, 8)


def test_the_models_rate_is_counted_apart_from_the_loading_cards_frames():
    """Right after the switch the card's 200 fps are still inside the rate window: the model's own rate must not
    read them (a status line said "25.2 fps | live" while the model made a few frames a second)."""
    source, sink, calls = CameraSource(fps=200), RecordingSink(fps=200), []

    def model_ready_after_a_hundred_cards() -> None:
        calls.append(len(calls))
        if len(calls) == 100:
            pipeline.set_processor(Inverter(seconds=0.2))  # at most 5 frames a second

    pipeline = FramePipeline(source, LoadingCard(), sink, PipelineConfig(max_frames=3),
                             between_frames=model_ready_after_a_hundred_cards)
    rates = []
    with pipeline:
        while not pipeline.wait(timeout=0.02):
            rates.append(pipeline.stats().result_fps)
    results = [rate for rate in rates if rate is not None]
    assert rates[0] is None, "no rate before the model's second call"
    assert results and max(results) <= 5.0, "the model's rate, never the card's"



def test_result_written_is_set_as_the_first_frame_the_model_made_is_written_not_when_the_model_is_ready():
    # "first stylised frame" waits on it: the frames written just after the model is swapped in are still cards.
    source, calls, seen = CameraSource(fps=200), [], []
    result_written = threading.Event()

    class NotesTheEvent(RecordingSink):
        def write(self, frame) -> None:
            seen.append(result_written.is_set())
            super().write(frame)

    def model_ready_at_the_third_call() -> None:
        calls.append(len(calls))
        if len(calls) == 3:
            pipeline.set_processor(Inverter())

    sink = NotesTheEvent()
    pipeline = FramePipeline(source, LoadingCard(), sink, PipelineConfig(max_frames=3),
                             between_frames=model_ready_at_the_third_call, result_written=result_written)
    run_to_end(pipeline)
    assert [is_inverted(frame) for frame in sink.frames] == [False, False, True, True, True]
    assert seen == [False, False, True, True, True] and pipeline.result_written is result_written

# -- the pipeline: paced output -------------------------------------------------------------------------------


def test_paced_output_keeps_a_steady_rate_repeating_the_last_frame_while_inference_is_slow():
    sink = RecordingSink(fps=50)
    pipeline = FramePipeline(CameraSource(fps=60), Inverter(seconds=0.1), sink, PipelineConfig())
    pipeline.start()
    time.sleep(1.3)
    assert pipeline.stop() is True
    first = sink.times[0]
    in_one_second = [t for t in sink.times if first <= t < first + 1.0]
    assert 45 <= len(in_one_second) <= 55  # 50 fps: the deadlines keep the mean rate exact despite jitter
    stats = pipeline.stats()
    assert stats.repeated > stats.written > 0  # inference gives ~10 fps, the rest are repeats of the last frame
    assert stats.written + stats.repeated == len(sink.frames)
    shown = inverted_numbers(sink)
    assert shown == sorted(shown)  # a repeat is always the newest produced frame, never an older one


def test_paced_output_resyncs_after_a_stall_instead_of_bursting():
    sink = RecordingSink(fps=50, stall_at=5, stall_seconds=0.3)
    pipeline = FramePipeline(CameraSource(fps=50), PassThrough(), sink, PipelineConfig())
    pipeline.start()
    time.sleep(0.8)
    pipeline.stop()
    after_stall = np.diff(sink.times[5:15])
    assert pipeline.stats().resyncs == 1
    assert after_stall.min() > 0.01, "frames owed during the stall must not be sent in a burst"


def test_paced_sink_keeps_receiving_frames_while_the_processor_is_swapped_for_the_model():
    # the service shows a pass-through while the model loads, then swaps; the virtual camera must not starve
    sink = RecordingSink(fps=50)
    pipeline = FramePipeline(CameraSource(fps=50), PassThrough(), sink, PipelineConfig())
    pipeline.start()
    time.sleep(0.3)
    pipeline.set_processor(Inverter(seconds=0.15))
    time.sleep(0.5)
    pipeline.stop()
    gaps = np.diff(sink.times)
    assert gaps.max() < 0.1  # never a gap near the 0.15 s model call: the last frame is repeated meanwhile
    assert is_inverted(sink.frames[0]) is False and is_inverted(sink.frames[-1]) is True


class HeldModel(Inverter):
    """A model whose calls wait for `release` (a first call that takes seconds), then invert."""

    def __init__(self, frames_per_call: int = 1) -> None:
        super().__init__(frames_per_call=frames_per_call)
        self.release = threading.Event()

    def process(self, frames: list[np.ndarray]) -> list[np.ndarray]:
        self.started.set()
        self.release.wait()
        return super().process(frames)


def swapped_in_during_a_live_run(model, between_frames=None) -> tuple[FramePipeline, RecordingSink]:
    """A live camera through a loading card to a paced output; `model` is handed in once frames flow."""
    sink = RecordingSink(fps=100)
    pipeline = FramePipeline(CameraSource(fps=100), LoadingCard(), sink, PipelineConfig(),
                             between_frames=between_frames)
    pipeline.start()
    deadline = time.monotonic() + 30.0
    while len(sink.frames) < 3:
        assert time.monotonic() < deadline, "no frame came through the loading card"
        time.sleep(0.01)
    pipeline.set_processor(model)
    assert model.started.wait(30.0)
    return pipeline, sink


def test_in_front_of_a_live_output_the_camera_keeps_moving_while_the_models_first_call_runs():
    # A model's first call takes seconds at real sizes: the picture must not freeze on the last card meanwhile.
    model = HeldModel()
    model.seconds = 0.2  # each call, after the release: the output shows the first one before the next replaces it
    pipeline, sink = swapped_in_during_a_live_run(model)
    written_when_the_call_began = len(sink.frames)
    deadline = time.monotonic() + 30.0
    while len({number_of(frame) for frame in sink.frames[written_when_the_call_began:]}) < 3:
        assert time.monotonic() < deadline, "the output froze while the model's first call ran"
        time.sleep(0.01)
    model.release.set()
    while not pipeline.result_written.is_set():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    pipeline.stop()
    first_result = next(i for i, frame in enumerate(sink.frames) if is_inverted(frame))
    model_input = model.log[0][1][0]
    cards_during_the_call = [number_of(frame) for frame in sink.frames[:first_result] if number_of(frame) > model_input]
    assert cards_during_the_call, "camera frames newer than the model's input were shown while it ran"
    assert not any(is_inverted(frame) for frame in sink.frames[:first_result])
    assert number_of(255 - sink.frames[first_result]) == model_input  # then the model's own first frame


def test_after_its_first_call_the_model_goes_on_with_the_newest_frame_the_card_showed_without_waiting():
    # Waiting for the camera's next frame would leave the model idle for up to a frame period right after the
    # first stylised frame (and a stop sent then would land between two model calls).
    model, card_log = HeldModel(), []
    sink = RecordingSink(fps=100)
    pipeline = FramePipeline(CameraSource(fps=100), LoadingCard(log=card_log), sink, PipelineConfig(max_frames=2))
    pipeline.start()
    deadline = time.monotonic() + 30.0
    while len(sink.frames) < 3:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    pipeline.set_processor(model)
    assert model.started.wait(30.0)
    while len(card_log) < 3:  # the card goes on beside the model's first call
        assert time.monotonic() < deadline
        time.sleep(0.01)
    model.release.set()
    assert pipeline.wait(30.0)
    pipeline.stop()
    first_input, second_input = model.log[0][1][0], model.log[1][1][0]
    newest_on_the_card = card_log[-1][1][0]
    assert first_input < newest_on_the_card == second_input


def test_commands_wait_while_the_models_first_call_runs_beside_the_card():
    # "a command never lands in the middle of a model call", also when that call runs beside the pass-through
    model, hook_calls = HeldModel(), []
    pipeline, _ = swapped_in_during_a_live_run(model, between_frames=lambda: hook_calls.append(model.log[:]))
    called_before_release = len(hook_calls)
    time.sleep(0.3)  # the card goes on at 100 fps meanwhile
    assert len(hook_calls) == called_before_release
    model.release.set()
    deadline = time.monotonic() + 30.0
    while len(hook_calls) == called_before_release:
        assert time.monotonic() < deadline, "commands were never applied after the first call"
        time.sleep(0.01)
    pipeline.stop()
    assert hook_calls[called_before_release], "the next command came after the call returned"


def test_a_stop_during_the_models_first_call_waits_for_it_like_any_model_call():
    model = HeldModel()
    pipeline, sink = swapped_in_during_a_live_run(model)
    assert pipeline.seconds_into_call() is not None
    pipeline.stop(timeout=0.5)
    assert sink.closed
    assert pipeline.join(timeout=0.1) is False  # the inference thread ends only once the call returned
    model.release.set()
    assert pipeline.join(timeout=30.0) is True


def test_a_models_first_call_that_fails_ends_the_run_as_an_inference_error():
    class FailsAtOnce(HeldModel):
        def process(self, frames):
            self.started.set()
            raise RuntimeError("UNet exploded")

    pipeline, _ = swapped_in_during_a_live_run(FailsAtOnce())
    assert pipeline.wait(30.0)
    pipeline.stop()
    assert isinstance(pipeline.error, RuntimeError) and pipeline.error_stage == "inference"


# -- the pipeline: frame boundaries ------------------------------------------------------------------------------


def test_between_frames_is_called_exactly_between_frames():
    log: list = []
    pipeline = FramePipeline(
        ListSource(20), Inverter(log=log), RecordingSink(), PipelineConfig(max_frames=5),
        between_frames=lambda: log.append(("hook", None)),
    )
    run_to_end(pipeline)
    assert [kind for kind, _ in log] == ["hook", "inv"] * 5


def test_processor_swap_requested_by_the_hook_applies_from_the_next_frame():
    log: list = []
    sink = RecordingSink()
    pipeline: FramePipeline

    def swap_after_three() -> None:
        if len(log) == 3:
            pipeline.set_processor(PassThrough(frames_per_call=2, log=log))

    pipeline = FramePipeline(ListSource(9), Inverter(log=log), sink, PipelineConfig(), between_frames=swap_after_three)
    run_to_end(pipeline)
    assert log == [("inv", [0]), ("inv", [1]), ("inv", [2]), ("pass", [3, 4]), ("pass", [5, 6]), ("pass", [7, 8])]
    assert [number_of(frame) for frame in sink.frames[3:]] == [3, 4, 5, 6, 7, 8]


def test_processor_swap_during_a_call_lets_that_call_finish_with_the_old_processor():
    log: list = []
    slow = Inverter(seconds=0.2, log=log)
    sink = RecordingSink()
    pipeline = FramePipeline(ListSource(4), slow, sink, PipelineConfig())
    pipeline.start()
    assert slow.started.wait(5.0)
    pipeline.set_processor(PassThrough(log=log))
    assert pipeline.wait(5.0)
    pipeline.stop()
    assert log == [("inv", [0]), ("pass", [1]), ("pass", [2]), ("pass", [3])]
    assert [number_of(255 - sink.frames[0])] + [number_of(frame) for frame in sink.frames[1:]] == [0, 1, 2, 3]


# -- the pipeline: failures and shutdown --------------------------------------------------------------------------


class FailsOnThirdCall(Inverter):
    def process(self, frames: list[np.ndarray]) -> list[np.ndarray]:
        if len(self.log) == 2:
            raise RuntimeError("UNet exploded")
        return super().process(frames)


def test_an_exception_in_the_processor_stops_cleanly_and_is_reported():
    source, sink = ListSource(10), RecordingSink()
    pipeline = FramePipeline(source, FailsOnThirdCall(), sink, PipelineConfig())
    pipeline.start()
    assert pipeline.wait(5.0)
    assert pipeline.stop() is True
    assert isinstance(pipeline.error, RuntimeError) and pipeline.error_stage == "inference"
    assert inverted_numbers(sink) == [0, 1]
    assert source.closed and sink.closed


def test_after_a_processor_error_a_paced_sink_keeps_getting_the_last_frame_until_stop():
    sink = RecordingSink(fps=50)
    pipeline = FramePipeline(CameraSource(fps=50), FailsOnThirdCall(), sink, PipelineConfig())
    pipeline.start()
    assert pipeline.wait(5.0)
    written_at_error = len(sink.frames)
    time.sleep(0.2)
    assert pipeline.stop() is True
    assert len(sink.frames) >= written_at_error + 7
    assert len({number_of(frame) for frame in sink.frames[written_at_error:]}) == 1
    assert pipeline.error_stage == "inference"


def test_an_exception_in_the_sink_stops_every_stage_and_is_reported():
    class BrokenSink(RecordingSink):
        def write(self, frame: np.ndarray) -> None:
            raise OSError("virtual camera vanished")

    source, sink = CameraSource(fps=100), BrokenSink()
    pipeline = FramePipeline(source, Inverter(), sink, PipelineConfig())
    pipeline.start()
    assert pipeline.wait(5.0)
    assert pipeline.stop() is True
    assert isinstance(pipeline.error, OSError) and pipeline.error_stage == "output"
    assert source.closed and sink.closed


@pytest.mark.parametrize(
    "make_source, make_sink",
    [(StuckSource, lambda: RecordingSink(fps=30)), (lambda: ListSource(10), StuckSink)],
    ids=["stuck source", "stuck sink"],
)
def test_stop_returns_within_two_seconds_with_a_stuck_stage_and_closes_source_and_sink(make_source, make_sink):
    source, sink = make_source(), make_sink()
    pipeline = FramePipeline(source, Inverter(), sink, PipelineConfig())
    pipeline.start()
    time.sleep(0.1)
    started = time.monotonic()
    assert pipeline.stop(timeout=2.0) is True
    assert time.monotonic() - started < 4.0  # the stuck stage is not waited for (it never returns)
    assert source.closed and sink.closed


class Hangs(Inverter):
    """A processor whose call does not return until `release` is set (a long model call)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def process(self, frames: list[np.ndarray]) -> list[np.ndarray]:
        self.log.append(("call", [number_of(frame) for frame in frames]))
        self.started.set()
        self.release.wait()
        return frames


def test_stop_gives_up_on_a_processor_that_never_returns_but_still_closes_source_and_sink():
    hangs, source, sink = Hangs(), CameraSource(fps=100), RecordingSink()
    pipeline = FramePipeline(source, hangs, sink, PipelineConfig())
    pipeline.start()
    assert hangs.started.wait(5.0)
    started = time.monotonic()
    assert pipeline.stop(timeout=0.5) is False  # the inference thread is still inside process()
    assert time.monotonic() - started < 4.0  # not held up by the call, which never returns
    assert source.closed and sink.closed
    hangs.release.set()


def test_join_after_stop_waits_for_the_processor_call_in_flight_and_no_further_call_starts():
    hangs, source, sink = Hangs(), CameraSource(fps=100), RecordingSink()
    pipeline = FramePipeline(source, hangs, sink, PipelineConfig())
    pipeline.start()
    assert hangs.started.wait(5.0)
    pipeline.stop(timeout=0.5)
    assert source.closed and sink.closed  # the devices are free while the call goes on
    assert pipeline.join(timeout=0.1) is False
    hangs.release.set()
    assert pipeline.join(timeout=30.0) is True
    assert len(hangs.log) == 1



def test_seconds_into_call_counts_up_inside_a_processor_call_and_is_none_between_calls():
    hangs, source, sink = Hangs(), ListSource(3), RecordingSink()
    pipeline = FramePipeline(source, hangs, sink, PipelineConfig())
    assert pipeline.seconds_into_call() is None
    pipeline.start()
    assert hangs.started.wait(30.0)
    first = pipeline.seconds_into_call()
    assert first is not None and first >= 0.0
    deadline = time.monotonic() + 30.0
    while pipeline.seconds_into_call() <= first:  # the same call, still running
        assert time.monotonic() < deadline
        time.sleep(0.01)
    hangs.release.set()
    assert pipeline.wait(timeout=30.0)  # the three frames went through: no call in flight any more
    assert pipeline.seconds_into_call() is None
    pipeline.stop()

# -- the pipeline: statistics ----------------------------------------------------------------------------------------


def test_counters_add_up_and_timings_are_measured():
    class SkipsEveryOther(Inverter):
        @property
        def skipped(self) -> int:
            return len(self.log) // 2

    sink = RecordingSink()
    pipeline = FramePipeline(CameraSource(fps=150), SkipsEveryOther(seconds=0.02), sink, PipelineConfig(max_frames=12))
    run_to_end(pipeline)
    stats = pipeline.stats()
    assert stats.frames_in == stats.consumed + stats.dropped + stats.pending
    assert stats.processed == stats.consumed == stats.written == 12
    assert stats.skipped == 6
    assert stats.inference_ms.count == 12 and stats.inference_ms.p50 >= 20
    assert stats.latency_ms.p50 >= stats.inference_ms.p50
    assert stats.latency_ms.p95 >= stats.latency_ms.p50
    assert 0 < stats.fps < 55  # at most one frame per 20 ms call (the rate itself is a benchmark's business)
    assert set(stats.as_dict()) >= {"frames_in", "processed", "written", "repeated", "dropped", "latency_ms", "fps"}


def test_skips_are_counted_once_per_processor_even_when_it_is_swapped_out_and_back_in():
    class SkipsEveryCall(Inverter):
        skipped = 0  # cumulative over its lifetime, like the similarity filter's counter

        def process(self, frames: list[np.ndarray]) -> list[np.ndarray]:
            self.skipped += 1
            return super().process(frames)

    log: list = []
    model, loading = SkipsEveryCall(log=log), PassThrough(log=log)
    plan = {2: loading, 4: model}  # model for 2 frames, loading card for 2, model again for 2
    pipeline: FramePipeline

    def follow_plan() -> None:
        if pipeline.stats().processed in plan:
            pipeline.set_processor(plan.pop(pipeline.stats().processed))

    pipeline = FramePipeline(ListSource(6), model, RecordingSink(), PipelineConfig(), between_frames=follow_plan)
    run_to_end(pipeline)
    assert [tag for tag, _ in log] == ["inv", "inv", "pass", "pass", "inv", "inv"]
    assert pipeline.stats().skipped == 4
