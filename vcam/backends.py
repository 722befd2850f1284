"""Registries tried in order, their errors joined into one line: pyvirtualcam's backend pattern, used for the
sources (the asked-for one, then the sample photo) and the sinks (`auto`: virtual camera, window, MJPEG)."""
from __future__ import annotations

from typing import Callable, Sequence, TypeVar

Opened = TypeVar("Opened")


def open_first(candidates: Sequence[tuple[str, Callable[[], Opened]]], error_type: type[Exception],
               none_opened: str) -> tuple[str, Opened, list[str]]:
    """Open the first candidate that opens: (its name, what it opened, 'name: error' of each one tried before it).

    Only `error_type` (a user's mistake or a missing device, one line each) moves on to the next candidate; any
    other exception is a bug and propagates. A single candidate's error is raised as it is; when several were
    tried and none opened, `error_type` is raised with `none_opened` and every candidate's error on one line.
    """
    errors: list[str] = []
    for name, opener in candidates:
        try:
            return name, opener(), errors
        except error_type as error:
            if len(candidates) == 1:
                raise
            errors.append(f"{name}: {error}")
    raise error_type(none_opened + "; ".join(errors))
