"""The soak's process sampler (psutil) reads the same memory, threads and open files as the kernel reports."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import soak  # noqa: E402  (bench/ is a folder of scripts, not a package)


def test_sampler_counts_the_threads_and_files_a_child_process_opens(tmp_path: Path) -> None:
    script = ("import threading, sys, time\n"
              "files = [open(sys.argv[1], 'w') for _ in range(7)]\n"
              "stop = threading.Event()\n"
              "threads = [threading.Thread(target=stop.wait) for _ in range(5)]\n"
              "[t.start() for t in threads]\n"
              "print('ready', flush=True)\n"
              "sys.stdin.readline(); stop.set()\n")
    child = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "f")], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        quiet = soak.sample(child.pid)
        assert quiet["threads"] == 6  # the main thread and five waiting ones
        assert quiet["fds"] >= 3 + 7  # stdio and the seven files (a few more may belong to the interpreter)
        assert 1 <= quiet["rss_mb"] < 1000
    finally:
        child.communicate("\n", timeout=60)


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="the old reader parsed Linux's /proc")
def test_sampler_agrees_with_what_the_old_proc_reader_reported() -> None:
    stop = threading.Event()
    extra = threading.Thread(target=stop.wait)
    extra.start()
    try:
        new = soak.sample(os.getpid())
        old = proc_sample(os.getpid())
    finally:
        stop.set()
        extra.join()
    assert new["threads"] == old["threads"] and new["fds"] == old["fds"]
    assert abs(new["rss_mb"] - old["rss_mb"]) <= 2  # the two reads are a moment apart


def proc_sample(pid: int) -> dict[str, int]:
    """What bench/soak.py computed before psutil: Linux's /proc read by hand (the reference on Linux)."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss_kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    return {"rss_mb": rss_kb // 1024, "threads": len(os.listdir(f"/proc/{pid}/task")),
            "fds": len(os.listdir(f"/proc/{pid}/fd"))}
