"""`vcam bench`'s memory figure: the process's peak resident memory, on every OS (no POSIX-only import at load)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from vcam.bench import peak_rss_mb


def test_bench_module_loads_where_the_resource_module_does_not_exist() -> None:
    # Windows has no `resource`; blocking it in sys.modules makes its import fail exactly as it does there.
    # (psutil's own Linux backend needs it, so psutil is imported first, as on Windows it needs none.)
    script = "import sys, psutil; sys.modules['resource'] = None; import vcam.bench; print('ok')"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_peak_is_at_least_the_current_resident_memory_and_follows_a_big_allocation() -> None:
    before = peak_rss_mb()
    assert before >= psutil.Process().memory_info().rss / (1024 * 1024) - 1
    block = bytearray(200 * 1024 * 1024)  # 200 MiB, touched page by page below so it becomes resident
    block[:: 4096] = b"\x01" * len(block[:: 4096])
    assert peak_rss_mb() >= before + 150 or before > 1000  # a peak already above this block may hide it
    del block


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="VmHWM is Linux's own record of the peak")
def test_peak_equals_the_kernels_high_water_mark() -> None:
    status = Path(f"/proc/{os.getpid()}/status").read_text()
    hwm_kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))
    assert peak_rss_mb() == pytest.approx(hwm_kb / 1024, abs=2)
