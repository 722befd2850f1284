"""Residual classifier-free guidance (RCFG, StreamDiffusion section 3.3) for the stream batch.

Notation per row of the stream batch (T slots x F frames, slot-major): x = x_t, e_c = the UNet's noise for the
prompt, e_u = its noise for the negative prompt, g = guidance_scale, d = delta, S = the stock noise (the noise
the row is believed to carry), all in epsilon space (v-models are converted first).

    none        eps = e_c                                   UNet batch T*F       [cond]
    full        eps = e_u + g (e_c - e_u)                   UNet batch 2*T*F     [uncond rows | cond rows]
    self        eps = d S + g (e_c - d S)                   UNet batch T*F       [cond]
    initialize  S[slot 0] := e_u(x[slot 0]), then as self   UNet batch (T+1)*F   [uncond slot 0 | cond rows]

The stock noise is what makes `self` and `initialize` cost (almost) nothing: instead of asking the UNet for the
negative prediction we reuse the noise the latent is known to contain. Slot 0 of a step carries exactly the
noise the new frame was noised with. For the later slots it is carried over from the previous step: writing the
row as x = alpha x0 + beta S, the consistency step gives
    denoised = (c_out + c_skip alpha) x0 + R,   R = c_out beta (S - eps) / alpha + c_skip beta S,
and re-noising for the next slot, x' = alpha' denoised + beta' n' (n' = its fixed noise), gives
    S' = n' + (alpha' / beta') R.
A guidance scale <= 1 changes nothing, so every mode then runs as `none` (no extra UNet rows).

With ddim / dpmsolver++ (core.solvers) only `none` and `full` apply: nothing is re-noised between slots, so there
is no fixed noise n' for the stock noise to restart from, and `StreamConfig` refuses `self` / `initialize` there.
"""
from __future__ import annotations

from typing import Callable

import torch

from core.config import GuidanceMode
from core.schedule import Schedule, epsilon_from_output

NoisePredictor = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # Engine.predict_noise


class ResidualGuidance:
    """One stream's guidance: builds the UNet batch, combines its prediction and carries the stock noise.

    `predict(x_t, slot0_noise) -> eps` is the only call per step; `set_embeddings` is called only when the prompt
    embeddings change, so the batched (B, L, D) embedding tensor is built once per prompt, not per frame.
    """

    def __init__(
        self,
        mode: GuidanceMode,
        guidance_scale: float,
        delta: float,
        schedule: Schedule,
        fixed_noise: torch.Tensor,  # (T*F, C, h, w): the stream batch's per-(slot, frame) noise
        predict_noise: NoisePredictor,
    ) -> None:
        self.mode: GuidanceMode = mode if guidance_scale > 1.0 else "none"
        self.guidance_scale = guidance_scale
        self.delta = delta
        self.schedule = schedule
        self._fixed_noise = fixed_noise
        self._predict_noise = predict_noise
        s, f = schedule, schedule.frames
        # Per-row timesteps and coefficients of the UNet batch (for the v -> eps conversion), fixed per mode.
        if self.mode == "full":
            self._timesteps = s.row_timesteps.repeat(2)  # (2*T*F,)
            self._alpha, self._beta = s.alpha_sqrt.repeat(2, 1, 1, 1), s.beta_sqrt.repeat(2, 1, 1, 1)
        elif self.mode == "initialize":
            self._timesteps = torch.cat([s.row_timesteps[:f], s.row_timesteps])  # ((T+1)*F,)
            self._alpha = torch.cat([s.alpha_sqrt[:f], s.alpha_sqrt])
            self._beta = torch.cat([s.beta_sqrt[:f], s.beta_sqrt])
        else:
            self._timesteps, self._alpha, self._beta = s.row_timesteps, s.alpha_sqrt, s.beta_sqrt
        self.batch_size = int(self._timesteps.shape[0])  # B: T*F, 2*T*F or (T+1)*F
        self._embeddings: torch.Tensor | None = None  # (B, L, D)
        # Stock noise of slots 1..T-1 for the next step; the primed buffer holds exactly its fixed noise.
        self._carried = fixed_noise[s.slot_rows(1)].clone()  # ((T-1)*F, C, h, w)
        self.last_stock: torch.Tensor | None = None  # (T*F, C, h, w): S used by the last step, for inspection

    def reset(self) -> None:
        """Forget the carried stock noise (with the stream batch's buffer, which it describes)."""
        self._carried = self._fixed_noise[self.schedule.slot_rows(1)].clone()
        self.last_stock = None

    def set_embeddings(self, cond: torch.Tensor, uncond: torch.Tensor) -> None:
        """Build the UNet's (B, L, D) embedding batch for this mode from (1, L, D) prompt embeddings."""
        rows = self.schedule.steps * self.schedule.frames
        cond_rows = cond.expand(rows, -1, -1)  # (T*F, L, D)
        if self.mode == "full":
            batch = torch.cat([uncond.expand(rows, -1, -1), cond_rows])
        elif self.mode == "initialize":
            batch = torch.cat([uncond.expand(self.schedule.frames, -1, -1), cond_rows])
        else:
            batch = cond_rows
        self._embeddings = batch.contiguous()

    def predict(self, x_t: torch.Tensor, slot0_noise: torch.Tensor) -> torch.Tensor:
        """Guided noise for the stream batch x_t (T*F, C, h, w); slot0_noise (F, C, h, w) is in slot 0's rows."""
        if self._embeddings is None:
            raise RuntimeError("set_embeddings() must be called before the first step")
        f = self.schedule.frames
        if self.mode == "full":
            latents = torch.cat([x_t, x_t])
        elif self.mode == "initialize":
            latents = torch.cat([x_t[:f], x_t])
        else:
            latents = x_t
        output = self._predict_noise(latents, self._timesteps, self._embeddings)  # (B, C, h, w)
        eps_all = epsilon_from_output(output, latents, self._alpha, self._beta, self.schedule.prediction_type)
        g, d = self.guidance_scale, self.delta
        if self.mode == "none":
            return eps_all
        if self.mode == "full":
            rows = x_t.shape[0]
            eps_u, eps_c = eps_all[:rows], eps_all[rows:]
            return eps_u + g * (eps_c - eps_u)
        if self.mode == "initialize":
            stock = torch.cat([eps_all[:f], self._carried])  # slot 0's stock is its real negative prediction
            eps_c = eps_all[f:]
        else:
            stock = torch.cat([slot0_noise, self._carried])
            eps_c = eps_all
        eps = d * stock + g * (eps_c - d * stock)
        self._carry(stock, eps)
        return eps

    def _carry(self, stock: torch.Tensor, eps: torch.Tensor) -> None:
        """S' = n' + (alpha'/beta') R for slots 1..T-1 of the next step (see the module docstring)."""
        s = self.schedule
        self.last_stock = stock
        residual = s.c_out * s.beta_sqrt * (stock - eps) / s.alpha_sqrt + s.c_skip * s.beta_sqrt * stock
        older, newer = s.slot_rows(0, s.steps - 1), s.slot_rows(1)
        self._carried = self._fixed_noise[newer] + s.alpha_sqrt[newer] / s.beta_sqrt[newer] * residual[older]
