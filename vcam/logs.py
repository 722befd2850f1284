"""Logging: a rotating file in the user's state directory plus one-line messages on stderr.

Routine notices are INFO (the terminal shows INFO and up). A fatal error is one line on the terminal and its
traceback in the file only (`log_traceback`): the user reads the fix, a bug report gets the traceback.
Third-party loggers that could leak secrets (obsws-python logs the OBS password at INFO) are held at WARNING.
"""
from __future__ import annotations

import logging
import logging.handlers
import threading
from pathlib import Path

import platformdirs

QUIET_LOGGERS = ("obsws_python", "websocket", "urllib3", "PIL", "diffusers", "transformers", "httpx")


def log_dir() -> Path:
    return Path(platformdirs.user_state_dir("vcam")) / "logs"


FILE_ONLY = {"file_only": True}  # `extra=` of a record meant for the log file, never the terminal


def _not_file_only(record: logging.LogRecord) -> bool:
    return not getattr(record, "file_only", False)


CLEAR_LINE = "\r\x1b[2K"  # back to the start of the terminal line and erase it


class TerminalHandler(logging.StreamHandler):
    """The terminal's handler, which also owns the status line redrawn in place at its foot.

    A status line has no newline at its end (it is redrawn over itself), so a notice written while it is up would
    be glued onto it ("  4.1 fps | ... | livevcam: model ready"). Every notice therefore erases the status line,
    prints itself on a line of its own and draws the status line again below it, under one lock."""

    def __init__(self) -> None:
        super().__init__()
        self._lock_status = threading.Lock()
        self._status: str | None = None

    def show_status(self, text: str) -> None:
        with self._lock_status:
            self._status = text
            self.stream.write(CLEAR_LINE + text)
            self.stream.flush()

    def end_status(self) -> None:
        """Leave the last status line on the terminal and move below it."""
        with self._lock_status:
            if self._status is not None:
                self.stream.write("\n")
                self.stream.flush()
            self._status = None

    def emit(self, record: logging.LogRecord) -> None:
        with self._lock_status:
            if self._status is not None:
                self.stream.write(CLEAR_LINE)
            super().emit(record)
            if self._status is not None:
                self.stream.write(self._status)
                self.stream.flush()


def terminal_handler() -> TerminalHandler | None:
    """The handler `setup_logging` put on the terminal (None before it ran)."""
    handlers = logging.getLogger("vcam").handlers
    return next((handler for handler in handlers if isinstance(handler, TerminalHandler)), None)


def log_traceback(error: BaseException, what: str) -> None:
    """`what` and the traceback of `error` into the log file only (the terminal already has its one line)."""
    logging.getLogger("vcam").error("%s: %s: %s", what, type(error).__name__, error,
                                    exc_info=(type(error), error, error.__traceback__), extra=FILE_ONLY)


def setup_logging(verbose: bool = False) -> Path:
    """Idempotent: a second call (tests, reload) does not add handlers twice."""
    root = logging.getLogger("vcam")
    path = log_dir() / "vcam.log"
    if getattr(root, "_vcam_configured", False):
        return path
    root.setLevel(logging.DEBUG)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.handlers.RotatingFileHandler(path, maxBytes=2_000_000, backupCount=3, encoding="utf-8")
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(threadName)s %(message)s"))
        file_handler.setLevel(logging.DEBUG)
        root.addHandler(file_handler)
    except OSError:
        pass  # a read-only home must not stop the camera
    stderr = TerminalHandler()
    stderr.setFormatter(logging.Formatter("vcam: %(message)s"))
    stderr.setLevel(logging.DEBUG if verbose else logging.INFO)
    stderr.addFilter(_not_file_only)
    root.addHandler(stderr)
    root.propagate = False
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    root._vcam_configured = True  # type: ignore[attr-defined]
    return path
