"""glibc's allocator told to keep freed memory for the next model call instead of handing it back to the kernel.

A torch UNet call on the CPU allocates and frees the same activation buffers every call. With glibc's defaults
the large ones are `mmap`ed and unmapped each time (anything over its 32 MB ceiling always is, smaller ones in a
thread's own arena are trimmed back), so every call faults its working set in again, page by page, zeroed by the
kernel: ~440,000 minor page faults (about 1.7 GB) per call of `sd21-shape`'s UNet at 256x256. The settings here
make every thread allocate from one arena that never unmaps or trims, so the second call onwards reuses the
first call's pages. Measured on that call, alternated in one process on 2 cores: 1.28x faster (median of 6),
page faults ~440,000 -> ~0-30,000 (README, Benchmarks). The cost: the process keeps its peak heap instead of
returning it between calls, which for a model that runs continuously is the same memory.

ONNX Runtime and OpenVINO keep their own memory pools; this matters for the torch engines and torch glue.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# mallopt(3) parameter numbers (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
NEVER_TRIM = 2**31 - 1  # the largest value mallopt takes: freed memory stays with the process

# The environment variables that set the same things (mallopt(3), "ENVIRONMENT"): a user who set one chose.
USER_MALLOC_SETTINGS = ("MALLOC_ARENA_MAX", "MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_",
                        "MALLOC_TOP_PAD_", "GLIBC_TUNABLES")


def reuse_freed_memory() -> bool:
    """Before any other thread starts (one arena is chosen per thread at its first allocation): one arena for
    every thread, no `mmap` per allocation, no trimming. True when applied; False (nothing changed) off glibc
    Linux or when the user set one of `USER_MALLOC_SETTINGS`."""
    if not sys.platform.startswith("linux") or any(name in os.environ for name in USER_MALLOC_SETTINGS):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - present on glibc only (musl has another allocator)
    except (OSError, AttributeError):
        return False
    return all(libc.mallopt(parameter, value) == 1 for parameter, value in (
        (M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, NEVER_TRIM)))
