"""Sinks that wrap the service's output: the status overlay, and the tee that adds the tray's preview window.

Both keep the wrapped sink's `fps` and `pacer` (`core.frame_io.FrameSink`), so the pipeline still writes the
virtual camera on the camera's own clock through them.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable

import numpy as np

from core.frame_io import FrameSink
from vcam.logs import log_traceback
from vcam.overlay import notices_of, with_notices

log = logging.getLogger("vcam")


class OverlaySink:
    """Draws the status line (fps, skip rate, prompt) on every frame before it reaches the wrapped sink."""

    def __init__(self, sink: FrameSink, text: Callable[[], str]) -> None:
        self.sink = sink
        self.text = text
        self.fps = sink.fps
        self.pacer = getattr(sink, "pacer", None)

    def write(self, frame: np.ndarray) -> None:
        self.sink.write(with_notices(frame, [*notices_of(frame), self.text()]))  # drawn after the sink's fit

    def close(self) -> None:
        self.sink.close()


class TeeSink:
    """The main sink plus an optional preview window opened later from the tray. A preview whose write fails is
    closed and dropped, and `on_preview_failed` says so in one line: the virtual camera goes on either way.
    Calls `on_first_stylised` once, after the first frame written once `stylised` is set (the pipeline sets it as
    the output writes the first frame the model made: a frame written just after loading may still be a pass-through)."""

    def __init__(self, sink: FrameSink, stylised: threading.Event, on_first_stylised: Callable[[], None],
                 on_preview_failed: Callable[[str], None] = log.warning) -> None:
        self.sink = sink
        self.fps = sink.fps
        self.pacer = getattr(sink, "pacer", None)
        self.preview: FrameSink | None = None
        self._stylised = stylised
        self._on_first_stylised: Callable[[], None] | None = on_first_stylised
        self._on_preview_failed = on_preview_failed

    def write(self, frame: np.ndarray) -> None:
        self.sink.write(frame)
        if self._on_first_stylised is not None and self._stylised.is_set():
            callback, self._on_first_stylised = self._on_first_stylised, None
            callback()
        preview = self.preview
        if preview is not None:
            try:
                preview.write(frame)
            except Exception as error:  # noqa: BLE001 - the preview is a convenience; the virtual camera goes on
                self.preview = None
                log_traceback(error, "preview window")  # the user hears one line; a bug keeps its traceback
                self._on_preview_failed(f"preview window closed after an error ({type(error).__name__}: {error}); "
                                        "the virtual camera goes on; open the preview again from the tray")
                self._close_quietly(preview)

    @staticmethod
    def _close_quietly(preview: FrameSink) -> None:
        try:
            preview.close()
        except Exception as error:  # noqa: BLE001 - already failing: its close may fail too; said in the log
            log.debug("closing the failed preview: %s", error)

    def close(self) -> None:
        try:
            if self.preview is not None:
                self.preview.close()
        finally:
            self.sink.close()
