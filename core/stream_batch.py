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
"""
from __future__ import annotations

from typing import Callable

import torch

from core.schedule import Schedule, consistency_step

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
        self.calls = 0

    def reset(self) -> None:
        """Forget the buffered frames; the next call primes the buffer again."""
        self.buffer = None
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
        denoised = consistency_step(eps, x_t, s)  # (T*F, C, h, w)
        older, newer = s.slot_rows(0, s.steps - 1), s.slot_rows(1)
        self.buffer = s.alpha_sqrt[newer] * denoised[older] + s.beta_sqrt[newer] * self.noise[newer]
        self.calls += 1
        return denoised[s.slot_rows(s.steps - 1)]

    def _primed_buffer(self, first_latents: torch.Tensor | None) -> torch.Tensor:
        s = self.schedule
        rows = s.slot_rows(1)
        if first_latents is None:
            clean = torch.zeros_like(self.noise[rows])
        else:
            clean = first_latents.repeat(s.steps - 1, 1, 1, 1)  # ((T-1)*F, C, h, w)
        return s.alpha_sqrt[rows] * clean + s.beta_sqrt[rows] * self.noise[rows]

    def _fresh_noise(self) -> torch.Tensor:
        shape = (self.schedule.frames, *self.latent_shape)
        fresh = torch.randn(shape, generator=self._fresh, dtype=torch.float32)
        return fresh.to(device=self.noise.device, dtype=self.noise.dtype)
