"""`DeviceSettings`: how many devices run the UNet and how the stages share the work (`--devices`, `--parallel`).

One frozen dataclass, so the CLI, presets and help derive from one definition (see shared/STYLE.md).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from engines.base import EngineUnavailableError

ParallelMode = Literal["pipeline", "asyncdiff"]
PARALLEL_CHOICES: tuple[str, ...] = ("pipeline", "asyncdiff")
DEFAULT_PORT = 29517


@dataclass(frozen=True)
class DeviceSettings:
    """Several devices for one stream.

    devices: "" (one device, the usual engine), "cpu:N" (N CPU processes), "N" (N GPUs if there are, else N CPU
    processes), or a list "cuda:0,cuda:1". parallel: "pipeline" (exact: micro-batches flow through the stages)
    or "asyncdiff" (approximate, every stage at once on one-call-old inputs). warmup: AsyncDiff's exact calls after
    a start, a prompt switch, a new batch layout or a restart of the stream's batch. stride: AsyncDiff's stride S
    (arXiv 2406.06911, section 3.4): the stages before the last run and pass their output on every S-th call, the
    last stage every call (see engines.asyncdiff). hosts: "ADDR[:PORT]" to listen on for workers started by hand on
    other machines (`python -m engines.stage_worker --connect ADDR:PORT --rank K`) instead of starting them here.
    """

    # The metadata is what vcam's settings schema reads (help line, range, option name): these fields are the
    # preset's [devices] section and the --devices/--parallel/--asyncdiff-warmup/--hosts options.
    devices: str = field(default="", metadata={"help": "cpu:N (N CPU processes) | N | cuda:0,cuda:1: the UNet in "
                                               "stages over them", "metavar": "DEVICES"})
    parallel: ParallelMode = field(default="pipeline", metadata={
        "help": "pipeline (exact) or asyncdiff (lower latency, approximate)"})
    warmup: int = field(default=2, metadata={"help": "AsyncDiff: exact calls after a start, a prompt switch or a cut",
                                             "range": (0, 1000), "cli": "--asyncdiff-warmup"})
    stride: int = field(default=1, metadata={"help": "AsyncDiff's stride: the stages before the last run and pass "
                                             "their output on every N-th call", "range": (1, 16), "cli": "--asyncdiff-stride"})
    hosts: str = field(default="", metadata={"help": "ADDR[:PORT] to wait on for stage workers started on other "
                                             "machines", "metavar": "ADDR"})

    def __post_init__(self) -> None:
        if self.parallel not in PARALLEL_CHOICES:
            raise EngineUnavailableError(
                f"--parallel must be one of {', '.join(PARALLEL_CHOICES)}, got {self.parallel!r}")
        if self.warmup < 0:
            raise EngineUnavailableError(f"--asyncdiff-warmup must be 0 or more calls, got {self.warmup}")
        if self.stride < 1:
            raise EngineUnavailableError(f"--asyncdiff-stride must be 1 or more calls, got {self.stride}")
        self.device_list()  # a malformed --devices is refused when the settings are made, not at the first frame

    @property
    def several(self) -> bool:
        """True when more than one process runs the UNet."""
        return len(self.device_list()) > 1

    def device_list(self) -> list[str]:
        """One torch device string per rank (rank 0 first)."""
        text = self.devices.strip()
        if not text:
            return []
        import torch  # here, not at the top: `vcam --help` reads this schema and must not wait seconds for torch

        how = "use cpu:N, N, or a list like cuda:0,cuda:1"
        if text.startswith("cpu:") or text.isdigit():
            count_text = text.split(":", 1)[1] if text.startswith("cpu:") else text
            if not count_text.isdigit() or int(count_text) < 1:
                raise EngineUnavailableError(f"--devices {text!r}: the count must be a whole number >= 1; {how}")
            count = int(count_text)
            if text.isdigit() and torch.cuda.device_count() >= count:
                return [f"cuda:{index}" for index in range(count)]
            return ["cpu"] * count
        devices = [part.strip() for part in text.split(",") if part.strip()]
        for device in devices:
            kind = device.split(":", 1)[0]
            if kind not in ("cpu", "cuda"):
                raise EngineUnavailableError(f"--devices {text!r}: unknown device {device!r}; {how}")
            if kind == "cuda" and not torch.cuda.is_available():
                raise EngineUnavailableError(
                    f"--devices {text!r}: torch sees no CUDA GPU; use --devices cpu:{len(devices)}")
        return devices

    def backend(self) -> str:
        """NCCL when every rank is a GPU, else gloo (the CPU, mixed devices, other hosts)."""
        devices = self.device_list()
        return "nccl" if devices and all(d.startswith("cuda") for d in devices) and not self.hosts else "gloo"

    def rendezvous(self) -> tuple[str, int]:
        """(address, port) rank 0 listens on: 127.0.0.1 and a free port, or the --hosts address."""
        if not self.hosts:
            return "127.0.0.1", 0
        host, _, port = self.hosts.partition(":")
        if port and not port.isdigit():
            raise EngineUnavailableError(f"--hosts {self.hosts!r}: the port must be a number, e.g. 0.0.0.0:29517")
        return host or "0.0.0.0", int(port) if port else DEFAULT_PORT
