"""Logging: a rotating file in the user's state directory plus one-line messages on stderr.

Routine notices are INFO (the terminal shows INFO and up). A fatal error is one line on the terminal and its
traceback in the file only (`log_traceback`): the user reads the fix, a bug report gets the traceback.
Third-party loggers that could leak secrets (obsws-python logs the OBS password at INFO) are held at WARNING.
"""
from __future__ import annotations

import logging
import logging.handlers
from pathlib import Path

import platformdirs

QUIET_LOGGERS = ("obsws_python", "websocket", "urllib3", "PIL", "diffusers", "transformers", "httpx")


def log_dir() -> Path:
    return Path(platformdirs.user_state_dir("vcam")) / "logs"


FILE_ONLY = {"file_only": True}  # `extra=` of a record meant for the log file, never the terminal


def _not_file_only(record: logging.LogRecord) -> bool:
    return not getattr(record, "file_only", False)


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
    stderr = logging.StreamHandler()
    stderr.setFormatter(logging.Formatter("vcam: %(message)s"))
    stderr.setLevel(logging.DEBUG if verbose else logging.INFO)
    stderr.addFilter(_not_file_only)
    root.addHandler(stderr)
    root.propagate = False
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    root._vcam_configured = True  # type: ignore[attr-defined]
    return path
