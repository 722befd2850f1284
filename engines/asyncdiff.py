"""AsyncDiff on a stream batch: which row of an earlier call a stage reads, when each stage runs, and the schedule
rendered in one process.

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

**Stride** (the paper's section 3.4 and its code, `asyncdiff/async_sd.py`). With stride S the paper completes S
steps per parallel round: the components before the last run once per round, on what the component before them
produced one round (S steps) earlier, and only the last component runs at every step; communication happens
once per round. A stream has no rounds of its own (every call is one step of every slot), so vcam counts rounds
in calls: after the warm-up every S-th call is an *exchange*, where every stage runs and passes its output on;
on the calls between, only the last stage runs, on stage N-2's output of the last exchange, each row following
its frame back as many calls as have passed (`rows_back`; a frame that entered since reads the newest frame of
that call, slot 0). The paper also gives the last component S-1 devices of its own so that its S steps of a round
run at once; a stream's calls arrive one camera frame apart, so there is nothing to run at once: vcam keeps one
device per stage, and what stride buys is 1/S of the transfers and of the first stages' compute per call.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Sequence

import torch

from engines.stages import StageState, UNetUnits

CallKind = Literal["exact", "exchange", "last stage only"]


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


def rows_back(one_call: torch.Tensor, calls: int) -> torch.Tensor:
    """`predecessor_rows` composed `calls` times: (B,) the row of `calls` calls ago carrying each row's frame, i.e.
    slot s reads slot max(s - calls, 0) (the newest frame of that call when this row's frame was not there yet)."""
    rows = torch.arange(one_call.numel())
    for _ in range(calls):
        rows = one_call[rows]
    return rows


def stale_state(pending: StageState, rows: torch.Tensor, emb: torch.Tensor, context: torch.Tensor) -> StageState:
    """An earlier call's stage input, its rows re-ordered to follow the frames, with this call's embeddings."""
    rows = rows.to(pending.sample.device)
    return StageState(pending.sample.index_select(0, rows), tuple(r.index_select(0, rows) for r in pending.residuals),
                      emb, context)


@dataclass
class AsyncClock:
    """Which kind each AsyncDiff call is: "exact" (all stages in sequence: the warm-up), "exchange" (every stage at
    once, each passing its output on) or "last stage only" (stride > 1: the calls between two exchanges).

    The warm-up starts again (`restart`) whenever the stale stage inputs stop describing the frames now in the
    batch: at a start, when the time or text embeddings change (a new batch layout, a prompt or negative-prompt
    switch), and when the stream restarts its batch (`forget_previous_calls`: a reset after a cut in the source, a
    rebuilt batch). A call the similarity filter skips never reaches the engine and moves nothing, so the stale
    inputs stay right.
    """

    warmup: int = 2
    stride: int = 1
    _exact_left: int = 0
    _async_calls: int = 0
    _restart: bool = field(default=True, repr=False)

    def restart(self) -> None:
        """The next call is exact again, and the `warmup - 1` after it."""
        self._restart = True

    def next_call(self, inputs_changed: bool) -> CallKind:
        """The kind of the call about to run; `inputs_changed`: its time or text embeddings differ from the last."""
        if inputs_changed or self._restart:
            self._restart, self._exact_left, self._async_calls = False, max(1, self.warmup), 0
        if self._exact_left > 0:
            self._exact_left -= 1
            return "exact"
        kind: CallKind = "exchange" if self._async_calls % self.stride == 0 else "last stage only"
        self._async_calls += 1
        return kind


def embeddings_changed(held: tuple[torch.Tensor, torch.Tensor] | None, emb: torch.Tensor,
                       context: torch.Tensor) -> bool:
    """True when (emb, context) differ from `held` (the pair the stages last received) in shape or value."""
    if held is None:
        return True
    return not all(a.shape == b.shape and torch.equal(a, b) for a, b in zip(held, (emb, context)))


class OneProcessAsyncDiff:
    """AsyncDiff's schedule (warm-up, stride, restarts) rendered in one process, stage after stage.

    Gives the numbers the multi-device engine gives in asyncdiff mode (tests/test_multidevice.py holds them equal
    bit for bit) at the cost of one device: what the fidelity figures run (bench/asyncdiff_fidelity.py). VAE and
    text encoder calls go to `local`; `boundaries` are the stage cuts ([0, c_1, ..., len(units)]).
    """

    name = "torch-asyncdiff-one-process"

    def __init__(self, local, units: UNetUnits, boundaries: Sequence[int], warmup: int = 2, stride: int = 1) -> None:
        if len(boundaries) < 3:
            raise ValueError(f"AsyncDiff needs at least 2 stages, got cuts {list(boundaries)}")
        self.local, self.units, self.boundaries = local, units, list(boundaries)
        for name in ("device", "dtype", "noise_schedule", "latent_channels", "vae_scale_factor"):
            setattr(self, name, getattr(local, name))
        self.clock = AsyncClock(warmup, stride)
        self._held: tuple[torch.Tensor, torch.Tensor] | None = None
        stages = len(self.boundaries) - 1
        self._pending: list[StageState | None] = [None] * stages  # stage k's input as last received (k >= 1)
        self._age = [0] * stages  # calls since stage k received it

    def encode_prompt(self, texts: Sequence[str]) -> torch.Tensor:
        return self.local.encode_prompt(texts)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return self.local.encode_images(images)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        return self.local.decode_latents(latents)

    def forget_previous_calls(self) -> None:
        """The stream restarted its batch: exact again for the warm-up."""
        self.clock.restart()

    def predict_noise(self, latents: torch.Tensor, timesteps: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w), (B,), (B, 77, D) -> (B, C, h, w), as `DistributedEngine.predict_noise` in asyncdiff mode."""
        embedded = self.units.run(StageState.inputs(latents, timesteps, embeddings), 0, 1)
        changed = embeddings_changed(self._held, embedded.emb, embedded.context)
        self._held = (embedded.emb, embedded.context)
        kind = self.clock.next_call(changed)
        cuts = list(zip(self.boundaries[:-1], self.boundaries[1:]))
        if kind == "exact":
            state = self.units.run(embedded, 1, cuts[0][1])
            for stage, (first, end) in enumerate(cuts[1:], start=1):
                self._pending[stage], self._age[stage] = state, 0
                state = self.units.run(state, first, end)
            return state.sample
        one_call = predecessor_rows(timesteps)
        outputs: dict[int, StageState] = {}
        if kind == "exchange":
            outputs[0] = self.units.run(embedded, 1, cuts[0][1])
        last = len(cuts) - 1
        for stage, (first, end) in enumerate(cuts[1:], start=1):
            self._age[stage] += 1
            if kind == "exchange" or stage == last:
                pending = self._pending[stage]
                assert pending is not None  # an exact call always comes first
                stale = stale_state(pending, rows_back(one_call, self._age[stage]), embedded.emb, embedded.context)
                outputs[stage] = self.units.run(stale, first, end)
        if kind == "exchange":
            for stage in range(1, len(cuts)):
                self._pending[stage], self._age[stage] = outputs[stage - 1], 0
        return outputs[last].sample
