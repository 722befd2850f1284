"""glibc keeps freed memory for the next model call (vcam.allocator): a freed 64 MB buffer is reused, not
unmapped and faulted in again page by page. Each case is a fresh process, since the arena settings bind at a
thread's first allocation."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")

SECOND_ALLOCATION_FAULTS = """
import json, resource, sys, threading
from vcam.allocator import reuse_freed_memory
applied = reuse_freed_memory() if sys.argv[1] == "tuned" else False
faults = {}
def allocate_twice():
    for attempt in (1, 2):  # 64 MB: above glibc's 32 MB mmap ceiling, so by default it is mmapped every time
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        buffer = bytearray(64 * 1024 * 1024)  # zero-filled: every page is touched
        faults[attempt] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
        del buffer
worker = threading.Thread(target=allocate_twice)  # where the model runs: the pipeline's inference thread
worker.start(); worker.join()
print(json.dumps({"applied": applied, "second": faults[2]}))
"""


def second_allocation(mode: str, env: dict | None = None) -> dict:
    done = subprocess.run([sys.executable, "-c", SECOND_ALLOCATION_FAULTS, mode], capture_output=True, text=True,
                          timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_a_freed_buffer_is_reused_by_the_next_allocation_on_a_worker_thread() -> None:
    tuned, default = second_allocation("tuned"), second_allocation("default")
    assert tuned["applied"]
    assert default["second"] > 10_000  # 64 MB = 16,384 pages faulted in again with glibc's defaults
    assert tuned["second"] < 1_000


def test_the_users_own_malloc_settings_win() -> None:
    env = {**os.environ, "MALLOC_ARENA_MAX": "4"}
    assert second_allocation("tuned", env)["applied"] is False


def test_the_cli_tunes_the_allocator_before_anything_else_runs() -> None:
    """`vcam` itself: the process that runs the model has the setting (its first call reuses nothing yet)."""
    probe = ("import vcam.cli, vcam.allocator, json; called = []\n"
             "vcam.cli.reuse_freed_memory = lambda: called.append(True)\n"
             "try:\n    vcam.cli.main(['presets'])\nexcept SystemExit:\n    pass\nprint(json.dumps(called))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [True]
