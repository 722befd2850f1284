"""Moving lists of tensors between the ranks of a torch.distributed process group, one message per list.

Every message is two point-to-point transfers: a small int64 header (tensor count, then dtype code, rank and
shape per tensor) and one byte buffer holding the tensors back to back. Packing costs one copy but turns the
~20 tensors of a stage state (hidden state, skip connections, embeddings) into a single round of the backend's
latency. Works the same over gloo (CPU tensors) and NCCL (tensors on the rank's GPU).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from engines.base import EngineUnavailableError

DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.float64)
MAX_DIMS = 6
HEADER_WIDTH = 2 + MAX_DIMS  # dtype code, ndim, dims
MAX_TENSORS = 64
TAG = 0


class WorkerLostError(EngineUnavailableError):
    """A stage worker stopped or stopped answering; the message is one line naming the rank and the fix (the CLI
    prints it as `vcam: error: ...`)."""


@dataclass
class LinkCounters:
    """Bytes this rank put on the wire and seconds it spent in transfers, for `vcam bench`."""

    bytes_sent: int = 0
    seconds: float = 0.0
    pending: list[Any] = field(default_factory=list)  # send works not yet waited for


def _header(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    if len(tensors) > MAX_TENSORS:
        raise ValueError(f"at most {MAX_TENSORS} tensors per message, got {len(tensors)}")
    header = torch.zeros(1 + MAX_TENSORS * HEADER_WIDTH, dtype=torch.int64)
    header[0] = len(tensors)
    for index, tensor in enumerate(tensors):
        row = 1 + index * HEADER_WIDTH
        header[row] = DTYPES.index(tensor.dtype)
        header[row + 1] = tensor.dim()
        header[row + 2: row + 2 + tensor.dim()] = torch.tensor(tensor.shape, dtype=torch.int64)
    return header


def pack(tensors: Sequence[torch.Tensor], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(header (int64), payload (uint8)) for `tensors`, both on `device`."""
    flat = [t.detach().to(device).contiguous().reshape(-1).view(torch.uint8) for t in tensors]
    payload = torch.cat(flat) if flat else torch.zeros(0, dtype=torch.uint8, device=device)
    return _header(tensors).to(device), payload


def _entries(header: torch.Tensor) -> list[tuple[torch.dtype, list[int], int]]:
    """(dtype, shape, bytes) of every tensor a header announces."""
    values = header.cpu().tolist()
    entries = []
    for index in range(values[0]):
        row = 1 + index * HEADER_WIDTH
        dtype, shape = DTYPES[values[row]], values[row + 2: row + 2 + values[row + 1]]
        entries.append((dtype, shape, math.prod(shape) * dtype.itemsize))
    return entries


def unpack(header: torch.Tensor, payload: torch.Tensor) -> list[torch.Tensor]:
    """Inverse of `pack`: views into `payload`."""
    tensors, offset = [], 0
    for dtype, shape, size in _entries(header):
        tensors.append(payload[offset: offset + size].view(dtype).reshape(shape))
        offset += size
    return tensors


def payload_bytes(header: torch.Tensor) -> int:
    """Bytes of the payload a header announces."""
    return sum(size for _, _, size in _entries(header))


def send_tensors(group: Any, tensors: Sequence[torch.Tensor], dst: int, device: torch.device,
                 counters: LinkCounters) -> None:
    """Start sending `tensors` to rank `dst`; the send completes in the background (see `flush_sends`)."""
    header, payload = pack(tensors, device)
    counters.pending.append((group.send([header], dst, TAG), header))
    counters.pending.append((group.send([payload], dst, TAG), payload))  # the buffers stay alive until waited
    counters.bytes_sent += header.numel() * 8 + payload.numel()


def flush_sends(counters: LinkCounters) -> None:
    """Wait for every send started on this rank."""
    for work, _ in counters.pending:
        work.wait()
    counters.pending.clear()


def recv_tensors(group: Any, src: int, device: torch.device) -> list[torch.Tensor]:
    """Receive one message from rank `src` (blocks; a peer that died raises RuntimeError from the backend)."""
    header = torch.zeros(1 + MAX_TENSORS * HEADER_WIDTH, dtype=torch.int64, device=device)
    group.recv([header], src, TAG).wait()
    payload = torch.empty(payload_bytes(header), dtype=torch.uint8, device=device)
    group.recv([payload], src, TAG).wait()
    return unpack(header, payload)
