"""`StreamBatch`: the rolling latent buffer of StreamDiffusion (arXiv 2312.12491, section 3.2).

T slots sit at the T timesteps of the schedule; one UNet call advances every slot by one step. A new group of F
frames enters slot 0 (noised to the noisiest timestep), the group in slot T-1 leaves fully denoised, and every
other group moves one slot on, re-noised to its next timestep with that slot's fixed noise. So frame k leaves
at call k + T - 1, equal to a T-step sequential img2img of frame k that used the same noise at every step.

Batch layout, slot-major: rows [s*F, (s+1)*F) are slot s; frame j of a group is always row s*F + j.

The buffer is primed on the first call (and after `reset`):
- img2img: every slot holds a copy of the first frame noised to that slot's timestep, so call j < T-1 returns
  the first frame denoised with j + 1 steps (from slot T-1-j on): a usable image from the first call.
- txt2img: every slot holds a zero latent re-noised to its timestep (that is, beta_s * its fixed noise).

ddim / dpmsolver++ (core.solvers) integrate an ODE, so nothing is re-noised: slot s's latent x moves to slot s+1
as the solver's step left it, with its multistep history (the data predictions x0 of the same frame at the
previous slots) beside it, and the group leaving slot T-1 is at sigma 0. Only the new frame is noised (with slot
0's fixed noise), once, as diffusers' img2img does, so frame k equals a sequential diffusers run on that noise.
Primed slots carry the first frame (img2img) or zeros (txt2img) as their history, so the first T-1 outputs are
approximate, and exact from call T-1 on.
"""
from __future__ import annotations

from typing import Callable

import torch

from core.schedule import Schedule, consistency_step, data_prediction
from core.solvers import dpm_solver_pp_update

# (x_t (T*F, C, h, w), noise in slot 0 (F, C, h, w)) -> guided epsilon (T*F, C, h, w)
EpsilonPredictor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def seeded_noise(shape: tuple[int, ...], seed: int, device: torch.device | str, dtype: torch.dtype) -> torch.Tensor:
    """Standard normal noise that depends only on the seed and shape (drawn on the CPU, so on every device)."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn(shape, generator=generator, dtype=torch.float32).to(device=device, dtype=dtype)


class StreamBatch:
    """The rolling buffer ((T-1)*F latents) and the fixed per-(slot, frame) noise (T*F latents)."""

    def __init__(
        self,
        schedule: Schedule,
        latent_shape: tuple[int, int, int],  # (C, h, w)
        seed: int,
        predict_epsilon: EpsilonPredictor,
    ) -> None:
        self.schedule = schedule
        self.latent_shape = latent_shape
        device, dtype = schedule.alpha_sqrt.device, schedule.alpha_sqrt.dtype
        rows = schedule.steps * schedule.frames
        self.noise = seeded_noise((rows, *latent_shape), seed, device, dtype)  # (T*F, C, h, w)
        # txt2img draws fresh noise per call from its own generator, seeded too, so a run is reproducible.
        self._fresh = torch.Generator(device="cpu").manual_seed(seed + 1)
        self._predict_epsilon = predict_epsilon
        self.buffer: torch.Tensor | None = None  # ((T-1)*F, C, h, w); None until primed
        self.history: list[torch.Tensor] = []  # ddim / dpmsolver++: m1 (, m2) of the buffered rows, ((T-1)*F, ...)
        self.calls = 0

    def reset(self) -> None:
        """Forget the buffered frames; the next call primes the buffer again."""
        self.buffer = None
        self.history = []
        self.calls = 0

    def step(self, new_latents: torch.Tensor | None) -> torch.Tensor:
        """Advance every slot one step. new_latents: clean latents (F, C, h, w), or None for txt2img.

        Returns the F latents that leave slot T-1 fully denoised.
        """
        s, f = self.schedule, self.schedule.frames
        noise0 = self.noise[:f]  # (F, C, h, w)
        if new_latents is None:
            noise0 = self._fresh_noise()
            x_new = noise0  # txt2img: pure noise stands for x at the noisiest timestep
        else:
            if tuple(new_latents.shape) != (f, *self.latent_shape):
                raise ValueError(f"expected latents {(f, *self.latent_shape)}, got {tuple(new_latents.shape)}")
            x_new = s.alpha_sqrt[:f] * new_latents + s.beta_sqrt[:f] * noise0
        if self.buffer is None:
            self.buffer = self._primed_buffer(new_latents)
        x_t = torch.cat([x_new, self.buffer])  # (T*F, C, h, w)
        eps = self._predict_epsilon(x_t, noise0)
        self.calls += 1
        if s.solver is not None:
            return self._solver_step(x_t, eps)
        denoised = consistency_step(eps, x_t, s)  # (T*F, C, h, w)
        older, newer = s.slot_rows(0, s.steps - 1), s.slot_rows(1)
        self.buffer = s.alpha_sqrt[newer] * denoised[older] + s.beta_sqrt[newer] * self.noise[newer]
        return denoised[s.slot_rows(s.steps - 1)]

    def _solver_step(self, x_t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """ddim / dpmsolver++: every row moves one solver step; latents and histories shift one slot on."""
        s = self.schedule
        assert s.solver is not None
        denoised = data_prediction(eps, x_t, s)  # (T*F, C, h, w): m0 of every row
        slot0 = torch.zeros_like(denoised[: s.frames])  # slot 0 runs first order: it has no history
        old_denoised = [torch.cat([slot0, m]) for m in self.history]  # m1 (, m2), (T*F, C, h, w) each
        x_next = dpm_solver_pp_update(x_t, denoised, old_denoised, s.solver)  # (T*F, C, h, w)
        older = s.slot_rows(0, s.steps - 1)
        self.buffer = x_next[older]
        self.history = [m[older] for m in [denoised, *old_denoised][: s.solver.history]]
        return x_next[s.slot_rows(s.steps - 1)]

    def _primed_buffer(self, first_latents: torch.Tensor | None) -> torch.Tensor:
        s = self.schedule
        rows = s.slot_rows(1)
        if first_latents is None:
            clean = torch.zeros_like(self.noise[rows])
        else:
            clean = first_latents.repeat(s.steps - 1, 1, 1, 1)  # ((T-1)*F, C, h, w)
        if s.solver is not None:
            self.history = [clean] * s.solver.history
        return s.alpha_sqrt[rows] * clean + s.beta_sqrt[rows] * self.noise[rows]

    def _fresh_noise(self) -> torch.Tensor:
        shape = (self.schedule.frames, *self.latent_shape)
        fresh = torch.randn(shape, generator=self._fresh, dtype=torch.float32)
        return fresh.to(device=self.noise.device, dtype=self.noise.dtype)
