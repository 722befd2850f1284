"""`window`: a preview window on the Qt GUI thread (owned by `vcam.qt_host.QtHost`)."""
from __future__ import annotations

import threading
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from vcam.overlay import notices_of, with_notices
from vcam.sink_base import SinkConfig, fit_to_config


class QtHostLike(Protocol):
    """The part of `vcam.qt_host.QtHost` the window needs: run a function on the GUI thread."""

    def call_soon(self, fn: Callable[[], Any]) -> None: ...



class WindowSink:
    """A preview window: a QLabel on the Qt GUI thread (owned by `QtHost`), updated with the newest frame.

    `write` runs on the pipeline's thread and only leaves the newest frame in a slot; at most one repaint is
    queued on the GUI thread at a time, so a busy GUI drops frames instead of queueing them without bound.
    `set_status(lines)` adds a small overlay (fps, skip rate, prompt) to the frames that follow.
    """

    def __init__(self, config: SinkConfig, host: QtHostLike, title: str = "vcam preview") -> None:
        self.fps = config.fps
        self._config = config
        self._host = host
        self._title = title
        self._lock = threading.Lock()
        self._pending: np.ndarray | None = None
        self._repaint_queued = False
        self._status: tuple[str, ...] = ()
        self._label: Any = None  # a QLabel, touched only on the GUI thread
        self.frames_shown = 0
        host.call_soon(self._open_window)

    def set_status(self, lines: Sequence[str]) -> None:
        self._status = tuple(lines)

    def write(self, frame: np.ndarray) -> None:
        # the status lines join the frame's notices in one box, drawn after fitting (two boxes would overlap)
        noticed = with_notices(frame, [*notices_of(frame), *self._status]) if self._status else frame
        fitted = np.array(fit_to_config(noticed, self._config))  # own copy for Qt
        with self._lock:
            self._pending = fitted
            queue_repaint = not self._repaint_queued
            self._repaint_queued = True
        if queue_repaint:
            self._host.call_soon(self._show_pending)

    def _open_window(self) -> None:
        from PySide6.QtCore import Qt
        from PySide6.QtWidgets import QLabel

        label = QLabel()
        label.setWindowTitle(self._title)
        label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        label.setStyleSheet("background: black")
        label.resize(self._config.width, self._config.height)
        label.show()
        self._label = label

    def _show_pending(self) -> None:
        from PySide6.QtGui import QImage, QPixmap

        with self._lock:
            frame, self._pending = self._pending, None
            self._repaint_queued = False
        if frame is None or self._label is None:
            return
        height, width = frame.shape[:2]
        image = QImage(frame.data, width, height, 3 * width, QImage.Format.Format_RGB888).copy()
        self._label.setPixmap(QPixmap.fromImage(image))
        self.frames_shown += 1

    def shown_image(self) -> np.ndarray | None:
        """The frame the window shows now, read back from Qt (GUI thread only; for checks and tests)."""
        if self._label is None or self._label.pixmap() is None or self._label.pixmap().isNull():
            return None
        from PySide6.QtGui import QImage

        image = self._label.pixmap().toImage().convertToFormat(QImage.Format.Format_RGB888)
        width, height = image.width(), image.height()
        data = np.frombuffer(image.constBits(), dtype=np.uint8, count=image.bytesPerLine() * height)
        return data.reshape(height, image.bytesPerLine())[:, : width * 3].reshape(height, width, 3).copy()

    def close(self) -> None:
        self._host.call_soon(self._close_window)

    def _close_window(self) -> None:
        if self._label is not None:
            self._label.close()
            self._label.deleteLater()
            self._label = None

