"""Lowering one thread's scheduling priority, so the threads that run the model win the cores."""
from __future__ import annotations

import os
import sys
import threading


def lower_this_threads_priority(niceness: int = 5) -> None:
    """Let the model's threads win the cores: on a machine whose cores the model fills, a capture thread that
    prepares the next frame at the same priority steals time from the frame being computed. Linux schedules
    threads as tasks, so this lowers only the calling thread; elsewhere (or without permission) nothing happens."""
    if not hasattr(os, "setpriority") or not sys.platform.startswith("linux"):
        return
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)
    except OSError:
        pass
