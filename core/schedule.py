"""`Schedule`: the per-slot coefficients of the stream batch, computed once per stream.

The stream batch runs T slots at once, slot i at timestep `t_index_list[i]` of the consistency (LCM) grid (for
ddim / dpmsolver++: slot i at step N - T + i of the solver's N-step schedule, see core.solvers). Every
coefficient a UNet step needs is a fixed function of the slot, so it is computed here once, repeated F times (one
row per frame of the slot) and shaped (T*F, 1, 1, 1) to broadcast over latents (T*F, C, h, w). The step itself is
then a few lines of arithmetic over these tensors (`consistency_step`), in the spirit of k-diffusion.

Closed forms (DDPM notation, abar_t = prod(1 - beta) up to t; LCM boundary condition, Luo et al. 2023):
    alpha_sqrt = sqrt(abar_t),  beta_sqrt = sqrt(1 - abar_t)
    c_skip = sd^2 / ((10 t)^2 + sd^2),  c_out = 10 t / sqrt((10 t)^2 + sd^2),  sd = 0.5
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from core.config import StreamConfig
from core.solvers import SolverRows, solver_schedule
from engines.base import NoiseScheduleConfig

SIGMA_DATA = 0.5  # LCM boundary condition constant
TIMESTEP_SCALING = 10.0  # LCM boundary condition: sharpens c_skip / c_out towards x0 away from t = 0


def lcm_timesteps(grid_steps: int, num_train_timesteps: int) -> np.ndarray:
    """The consistency grid: index i -> t = ratio * (grid_steps - i) - 1, ratio = num_train // grid_steps.

    With 50 grid steps over 1000 training steps this is 999, 979, ..., 19 (LCM with 50 original steps).
    """
    ratio = num_train_timesteps // grid_steps
    if ratio < 1:
        raise ValueError(f"grid_steps {grid_steps} exceeds the model's {num_train_timesteps} training timesteps")
    return ratio * (grid_steps - np.arange(grid_steps, dtype=np.int64)) - 1


def alphas_cumprod(noise: NoiseScheduleConfig) -> np.ndarray:
    """abar_t for t = 0..N-1 of the training schedule, in float64 (the products lose precision in fp32)."""
    n = noise.num_train_timesteps
    if noise.beta_schedule == "scaled_linear":
        betas = np.linspace(noise.beta_start**0.5, noise.beta_end**0.5, n, dtype=np.float64) ** 2
    elif noise.beta_schedule == "linear":
        betas = np.linspace(noise.beta_start, noise.beta_end, n, dtype=np.float64)
    else:
        raise ValueError(f"beta_schedule must be scaled_linear or linear, got {noise.beta_schedule!r}")
    return np.cumprod(1.0 - betas)


def consistency_scalings(timesteps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(c_skip, c_out) of the LCM boundary condition at integer timesteps."""
    scaled = TIMESTEP_SCALING * timesteps.astype(np.float64)
    c_skip = SIGMA_DATA**2 / (scaled**2 + SIGMA_DATA**2)
    c_out = scaled / np.sqrt(scaled**2 + SIGMA_DATA**2)
    return c_skip, c_out


@dataclass(frozen=True)
class Schedule:
    """Per-slot coefficients for T slots x F frames. Row r of the stream batch belongs to slot r // F."""

    steps: int  # T
    frames: int  # F
    prediction_type: str  # "epsilon" or "v_prediction": what the UNet outputs
    timesteps: torch.Tensor  # (T,) long: the slot timesteps
    row_timesteps: torch.Tensor  # (T*F,) long: what the UNet receives for one stream-batch call
    alpha_sqrt: torch.Tensor  # (T*F, 1, 1, 1)
    beta_sqrt: torch.Tensor  # (T*F, 1, 1, 1)
    c_skip: torch.Tensor  # (T*F, 1, 1, 1); 0 for ddim / dpmsolver++
    c_out: torch.Tensor  # (T*F, 1, 1, 1); 1 for ddim / dpmsolver++ (denoised = the data prediction x0)
    solver: SolverRows | None = None  # ddim / dpmsolver++ multistep coefficients; None for lcm

    @classmethod
    def build(
        cls, config: StreamConfig, noise: NoiseScheduleConfig, device: torch.device | str, dtype: torch.dtype
    ) -> "Schedule":
        """Compute every coefficient in float64 once, then cast to the engine's device and dtype."""
        frames = config.frame_buffer_size

        def rows(values: np.ndarray) -> torch.Tensor:
            per_row = np.repeat(values, frames)  # (T*F,) slot-major: all F frames of slot 0 first
            return torch.from_numpy(per_row).to(device=device, dtype=dtype).reshape(-1, 1, 1, 1)

        solver = None
        if config.scheduler == "lcm":
            grid = lcm_timesteps(config.grid_steps, noise.num_train_timesteps)
            slot_t = grid[list(config.t_index_list)]  # (T,)
            abar = alphas_cumprod(noise)[slot_t]
            c_skip, c_out = consistency_scalings(slot_t)
        else:
            all_t, sigmas = solver_schedule(alphas_cumprod(noise), config.num_inference_steps, config.use_karras_sigmas)
            first = config.num_inference_steps - config.steps  # img2img runs the schedule's tail
            slot_t = all_t[first:]  # (T,)
            abar = 1.0 / (sigmas[first:-1] ** 2 + 1.0)  # alpha_t^2 at the (possibly Karras) slot sigmas
            c_skip, c_out = np.zeros(len(slot_t)), np.ones(len(slot_t))
            order = config.effective_solver_order
            solver = SolverRows.build(sigmas, first, order, config.lower_order_final, rows)
        timesteps = torch.from_numpy(slot_t).to(device=device, dtype=torch.long)
        return cls(
            steps=config.steps,
            frames=frames,
            prediction_type=noise.prediction_type,
            timesteps=timesteps,
            row_timesteps=timesteps.repeat_interleave(frames),
            alpha_sqrt=rows(np.sqrt(abar)),
            beta_sqrt=rows(np.sqrt(1.0 - abar)),
            c_skip=rows(c_skip),
            c_out=rows(c_out),
            solver=solver,
        )

    def slot_rows(self, first_slot: int, end_slot: int | None = None) -> slice:
        """Rows of slots first_slot..end_slot-1 in a (T*F, ...) tensor."""
        end = self.steps if end_slot is None else end_slot
        return slice(first_slot * self.frames, end * self.frames)


def epsilon_from_output(
    output: torch.Tensor, x_t: torch.Tensor, alpha_sqrt: torch.Tensor, beta_sqrt: torch.Tensor, prediction_type: str
) -> torch.Tensor:
    """The UNet output as noise: epsilon as is; for v-prediction eps = alpha * v + beta * x_t.

    Guidance and the consistency step both work in epsilon space, so v-models need this one conversion only.
    """
    if prediction_type == "epsilon":
        return output
    if prediction_type == "v_prediction":
        return alpha_sqrt * output + beta_sqrt * x_t
    raise ValueError(f"prediction_type must be epsilon or v_prediction, got {prediction_type!r}")


def data_prediction(eps: torch.Tensor, x_t: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    """x0 = (x_t - beta eps) / alpha for every row: the "denoised" of DPM-Solver++ (data-prediction form)."""
    return (x_t - schedule.beta_sqrt * eps) / schedule.alpha_sqrt  # (T*F, C, h, w)


def consistency_step(eps: torch.Tensor, x_t: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    """One LCM step for every row: x0 = (x_t - beta * eps) / alpha; denoised = c_out * x0 + c_skip * x_t."""
    x0 = data_prediction(eps, x_t, schedule)
    return schedule.c_out * x0 + schedule.c_skip * x_t
