"""Specification of the sinks wrapped around the service's output: the tee that adds the tray's preview window."""
from __future__ import annotations

import logging
import threading

import numpy as np

from tests.test_sinks import RECORDER, recorder  # noqa: F401 - a pyvirtualcam backend standing in for the device
from vcam.file_sinks import NullSink
from vcam.sink_wrappers import TeeSink
from vcam.sinks import SinkConfig, open_sink


class BrokenPreview:
    """A preview whose window went away under it: every write fails, as a closed Qt widget's would."""

    fps = 30.0

    def __init__(self) -> None:
        self.writes = 0
        self.closed = False

    def write(self, frame: np.ndarray) -> None:
        self.writes += 1
        raise RuntimeError("Internal C++ object (QLabel) already deleted")

    def close(self) -> None:
        self.closed = True


def test_a_failing_preview_is_dropped_with_one_notice_and_the_main_output_goes_on():
    main, notices = NullSink(), []
    tee = TeeSink(main, threading.Event(), lambda: None, on_preview_failed=notices.append)
    preview = tee.preview = BrokenPreview()
    frame = np.zeros((8, 8, 3), dtype=np.uint8)
    for _ in range(3):
        tee.write(frame)
    assert main.frames_written == 3, "the virtual camera never misses a frame"
    assert preview.writes == 1 and preview.closed and tee.preview is None
    assert len(notices) == 1 and "preview window closed after an error (RuntimeError: Internal C++ object" in notices[0]
    assert "open the preview again from the tray" in notices[0] and "\n" not in notices[0]


def test_a_failing_preview_leaves_its_traceback_in_the_log_file_only(caplog):
    tee = TeeSink(NullSink(), threading.Event(), lambda: None, on_preview_failed=lambda line: None)
    tee.preview = BrokenPreview()
    with caplog.at_level(logging.ERROR, logger="vcam"):
        tee.write(np.zeros((8, 8, 3), dtype=np.uint8))
    [record] = [r for r in caplog.records if r.exc_info]
    assert record.exc_info[0] is RuntimeError and "preview window" in record.getMessage()
    assert getattr(record, "file_only", False), "the terminal has its one line already"


def test_the_tee_lends_the_virtual_cameras_pacer_to_the_pipeline(recorder):
    camera = open_sink("vcam", SinkConfig(width=32, height=32, fps=30, backend=RECORDER))
    try:
        tee = TeeSink(camera, threading.Event(), lambda: None)
        assert tee.fps == 30 and tee.pacer is camera.pacer, "one clock for the stream, through the wrapper"
    finally:
        camera.close()
    assert TeeSink(NullSink(), threading.Event(), lambda: None).pacer is None, "an unpaced sink lends none"
