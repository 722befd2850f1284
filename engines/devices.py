"""Choosing where a model runs: device, precision and CPU threading.

Kept apart from the engines so every backend makes the same choice for `--device auto`, and so the CPU
settings that matter (flush-to-zero, thread count) are applied in one place.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from engines.base import EngineUnavailableError

DEVICE_CHOICES: tuple[str, ...] = ("auto", "cuda", "mps", "cpu")


@dataclass(frozen=True)
class Placement:
    """Where and in what precision an engine runs."""

    device: torch.device
    dtype: torch.dtype


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(requested: str = "auto") -> torch.device:
    """`auto` picks cuda, then mps, then cpu; an explicit device that is absent is an error naming the fix."""
    kind = requested.split(":", 1)[0]
    if kind not in DEVICE_CHOICES:
        raise EngineUnavailableError(
            f"unknown device {requested!r}; use one of {', '.join(DEVICE_CHOICES)} (or cuda:N)")
    if kind == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    if kind == "cuda" and not torch.cuda.is_available():
        raise EngineUnavailableError(
            "device cuda requested but torch sees no CUDA GPU; install the CUDA build of torch or use --device cpu")
    if kind == "mps" and not _mps_available():
        raise EngineUnavailableError("device mps requested but Metal is not available here; use --device cpu")
    return torch.device(requested)


def default_dtype(device: torch.device) -> torch.dtype:
    """fp16 on GPUs (twice the speed, SD is trained to tolerate it); fp32 on the CPU, where fp16 is slow."""
    return torch.float32 if device.type == "cpu" else torch.float16


def configure_cpu(threads: int | None = None) -> None:
    """Flush denormals to zero (random or tiny weights produce them: ~20x slower math) and cap threads."""
    torch.set_flush_denormal(True)
    if threads is not None:
        if threads < 1:
            raise EngineUnavailableError(f"--threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)


def flush_denormals_on_this_thread() -> None:
    """Flush-to-zero is per thread (CPU FTZ/DAZ bits), and OpenMP workers copy the bits of the thread that starts
    their pool when the pool is created. A thread whose first parallel op ran without it keeps slow workers
    (measured here: a tiny-model UNet call 3-4 s instead of 0.2 s). So every CPU model call sets it on its own
    thread, before that thread's first op; the call costs about a microsecond."""
    torch.set_flush_denormal(True)


def place(requested: str = "auto", threads: int | None = None, dtype: torch.dtype | None = None) -> Placement:
    """Resolve the device and precision, and apply the CPU settings when the CPU is what runs the model."""
    device = resolve_device(requested)
    if device.type == "cpu":
        configure_cpu(threads)
    return Placement(device=device, dtype=dtype if dtype is not None else default_dtype(device))
