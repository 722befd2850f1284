"""The status line says what is true now: the rate of what the output shows (the loading card's while the model
loads, then the model's own), no rate before there is one, and the real state."""
from __future__ import annotations

from dataclasses import replace

from core.stats import PipelineStats, Summary
from vcam.status_line import status_line

NO_TIMES = Summary(0, float("nan"), float("nan"), float("nan"))
RUN = PipelineStats(frames_in=0, consumed=0, processed=0, results=0, written=0, repeated=0, dropped=0,
                    output_dropped=0, pending=0, skipped=0, resyncs=0, capture_ms=NO_TIMES, inference_ms=NO_TIMES,
                    output_ms=NO_TIMES, latency_ms=NO_TIMES, fps=25.2, result_fps=None,
                    output_fps=30.0)


def test_while_the_model_loads_the_rate_is_the_loading_cards():
    assert status_line(RUN, 0.0, "anime", "loading") == " 25.2 fps | skip   0% | anime | loading"


def test_once_live_the_rate_is_the_models_own_never_the_cards_still_in_the_window():
    live = replace(RUN, fps=21.7, result_fps=4.1)  # the card's frames of the last 2 s lift the mixed rate
    assert status_line(live, 0.25, "anime", "live") == "  4.1 fps | skip  25% | anime | live"


def test_before_the_models_second_call_there_is_no_rate_rather_than_a_false_one():
    assert status_line(RUN, 0.0, "anime", "live").startswith("   -- fps |"), "neither the card's 25.2 nor 0.0"


def test_a_model_slower_than_one_frame_in_two_seconds_reads_its_rate_not_zero():
    slow = replace(RUN, result_fps=1 / 3)  # core.stats.RateMeter keeps the last two frames for a slow stream
    assert status_line(slow, 0.0, "anime", "live").startswith("  0.3 fps |")


def test_paused_shows_the_rate_the_output_gets_and_says_paused():
    # paused, the camera passes through: its frames are not the model's (result_fps), the output gets them all
    assert status_line(replace(RUN, fps=30.0, result_fps=0.7), 0.0, "anime", "paused") == " 30.0 fps | skip   0% | anime | paused"


def test_a_notice_on_a_terminal_is_printed_above_the_status_line_never_glued_onto_it():
    import io
    import logging

    from vcam.logs import CLEAR_LINE, TerminalHandler

    terminal = io.StringIO()
    handler = TerminalHandler()
    handler.setStream(terminal)
    handler.setFormatter(logging.Formatter("vcam: %(message)s"))
    logger = logging.getLogger("vcam-status-line-spec")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        handler.show_status("  4.1 fps | live")
        logger.warning("model ready")
        handler.show_status("  4.2 fps | live")
        handler.end_status()
        logger.warning("released")
    finally:
        logger.removeHandler(handler)
    assert terminal.getvalue() == (CLEAR_LINE + "  4.1 fps | live" + CLEAR_LINE + "vcam: model ready\n" + "  4.1 fps | live"
                                   + CLEAR_LINE + "  4.2 fps | live" + "\n" + "vcam: released\n")
