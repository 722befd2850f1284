"""AsyncDiff's staleness on a stream batch: which row of the previous call a stage reads for each row now.

AsyncDiff (Chen et al., "AsyncDiff: Parallelizing Diffusion Models by Asynchronous Denoising", arXiv 2406.06911)
runs the N stages of a denoiser at once: at step n stage k reads what stage k-1 produced at step n-1, so no stage
waits for another. In a stream batch the previous step of a frame is exactly what the slot before it computed
one call earlier (rows shift by one slot per call, see core/stream_batch.py), so for each row of call n:

- a row of slot s > 0 reads the row of slot s-1 of call n-1 that carries the same frame and the same guidance
  branch (cond / uncond);
- a row of slot 0 (a frame entering the batch) has no previous step. We read the previous call's slot-0 row: the
  previous camera frame at the same timestep. The alternative, waiting for this call's stage k-1 on slot 0, would
  put the stages back in sequence for those rows and give up the latency gain; consecutive camera frames are
  close, which is what makes the previous frame a good stand-in (and the warm-up calls exact).

The engine sees only the UNet batch, not the stream's layout, so the mapping is read off the per-row timesteps:
slots are the distinct timesteps in decreasing order (slot 0 is the noisiest), and the j-th row from the end
holding slot s's timestep follows the j-th row from the end holding slot s-1's. Counting from the end pairs the
rows of every RCFG layout: none/self [slot-major T*F], full [uncond T*F | cond T*F], initialize [uncond F | T*F].
"""
from __future__ import annotations

import torch


def predecessor_rows(timesteps: torch.Tensor) -> torch.Tensor:
    """(B,) per-row timesteps of a stream-batch UNet call -> (B,) long: the row of the previous call each row's
    stage input is taken from (itself for slot-0 rows)."""
    values = [int(t) for t in timesteps.reshape(-1).tolist()]
    slots = sorted(set(values), reverse=True)  # slot 0 = the largest timestep
    rows_of = {t: [r for r, v in enumerate(values) if v == t] for t in slots}
    source = list(range(len(values)))
    for slot in range(1, len(slots)):
        here, before = rows_of[slots[slot]], rows_of[slots[slot - 1]]
        for back in range(1, min(len(here), len(before)) + 1):
            source[here[-back]] = before[-back]
    return torch.tensor(source, dtype=torch.long)
