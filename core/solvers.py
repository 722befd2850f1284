"""DPM-Solver++ (multistep, data prediction) for the stream batch, with DDIM as its first order.

Lu et al., "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic Models", arXiv 2211.01095.
Notation (VP): x_t = alpha_t x0 + sigma_t eps, sigma = sigma_t / alpha_t (the VE sigma of the schedule),
lambda_t = log(alpha_t / sigma_t) = -log(sigma). One step from s to t with h = lambda_t - lambda_s uses the data
predictions m0 (at s), m1, m2 (at the two previous steps of the same frame), h_0 = lambda_s - lambda_{s-1},
h_1 = lambda_{s-1} - lambda_{s-2}, r0 = h_0 / h, r1 = h_1 / h:

    order 1 (= DDIM):   x_t = (sigma_t / sigma_s) x_s + alpha_t (1 - e^-h) m0
    order 2 (2M):       ... + alpha_t (1 - e^-h) / 2 * D1,             D1 = (m0 - m1) / r0
    order 3 (3M):       ... + alpha_t (1 - (1 - e^-h) / h) D1' + alpha_t (1/2 - (h - (1 - e^-h)) / h^2) D2

with D1' = D1 + r0 / (r0 + r1) (D1 - D1_1), D2 = (D1 - D1_1) / (r0 + r1), D1_1 = (m1 - m2) / r1: the 2nd order is
the "midpoint" form k-diffusion's sample_dpmpp_2m uses, the 3rd the form of diffusers' DPMSolverMultistepScheduler,
whose timesteps, Karras sigmas, warm-up orders and final-step rule this module reproduces (so a stream equals a
sequential diffusers run). Every coefficient depends only on the step, so `SolverRows.build` computes them once per
stream in float64; `dpm_solver_pp_update` is the per-call arithmetic.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

KARRAS_RHO = 7.0  # Karras et al. 2022, eq. (5)


def solver_schedule(
    alphas_cumprod: np.ndarray, num_inference_steps: int, use_karras_sigmas: bool
) -> tuple[np.ndarray, np.ndarray]:
    """(timesteps (N,) int64, sigmas (N+1,) float64) of an N-step solver schedule; sigmas end with 0 (x0).

    Default spacing is "trailing" (Lin et al. 2023, arXiv 2305.08891, table 2): t_i = round(1000 - i*1000/N) - 1,
    so the first step starts at t = 999 and few-step img2img keeps evenly spaced steps. Karras spacing
    (arXiv 2206.00364, eq. 5) spaces sigma^(1/rho) evenly between the training sigmas and maps each sigma back to
    a (rounded) timestep by log-sigma interpolation; the solver then uses the exact Karras sigma, as diffusers does.
    """
    train_sigmas = np.sqrt((1.0 - alphas_cumprod) / alphas_cumprod)  # (N_train,), increasing with t
    n_train = len(train_sigmas)
    if use_karras_sigmas:
        ramp = np.linspace(0.0, 1.0, num_inference_steps)
        max_inv, min_inv = train_sigmas[-1] ** (1 / KARRAS_RHO), train_sigmas[0] ** (1 / KARRAS_RHO)
        sigmas = (max_inv + ramp * (min_inv - max_inv)) ** KARRAS_RHO
        log_train = np.log(train_sigmas)
        timesteps = np.interp(np.log(sigmas), log_train, np.arange(n_train)).round().astype(np.int64)
    else:
        timesteps = np.arange(n_train, 0, -n_train / num_inference_steps).round().astype(np.int64) - 1
        sigmas = train_sigmas[timesteps]
    return timesteps, np.append(sigmas, 0.0)


def step_orders(num_inference_steps: int, first_step: int, solver_order: int, lower_order_final: bool) -> list[int]:
    """The order used at steps first_step..N-1: warm-up (order j+1 at the j-th step run, no history before the
    first), first order at the last step (its sigma is 0, so x = m0), at most second order at the second-to-last
    step when lower_order_final and N < 15 (diffusers' rule for stability with few steps)."""
    orders = []
    for run, step in enumerate(range(first_step, num_inference_steps)):
        history = min(run, solver_order)  # previous data predictions of this frame
        last = step == num_inference_steps - 1
        second_last = step == num_inference_steps - 2 and lower_order_final and num_inference_steps < 15
        if solver_order == 1 or history < 1 or last:
            orders.append(1)
        elif solver_order == 2 or history < 2 or second_last:
            orders.append(2)
        else:
            orders.append(3)
    return orders


@dataclass(frozen=True)
class SolverRows:
    """DPM-Solver++ coefficients per stream-batch row, each (T*F, 1, 1, 1); slot s is step first_step + s.

    Unused terms of a row have weight 0 (and r = 1, so no division by zero), so rows at different orders share
    one batched update.
    """

    orders: tuple[int, ...]  # (T,) order used at each slot
    lambda_: torch.Tensor  # lambda_s = -log(sigma_s)
    h: torch.Tensor  # lambda_t - lambda_s; inf at the last step (sigma_t = 0)
    r0: torch.Tensor  # h_0 / h
    r1: torch.Tensor  # h_1 / h
    sigma_ratio: torch.Tensor  # sigma_t / sigma_s (VP sigmas)
    alpha_t: torch.Tensor  # alpha at the step's target
    phi_1: torch.Tensor  # 1 - e^-h
    d1_weight: torch.Tensor  # weight of D1: 0, (1 - e^-h)/2 or 1 - (1 - e^-h)/h
    d2_weight: torch.Tensor  # weight of D2: 1/2 - (h - (1 - e^-h))/h^2 at order 3, else 0
    d1_correction: torch.Tensor  # r0 / (r0 + r1) at order 3, else 0
    history: int  # data predictions carried per row: solver_order - 1

    @classmethod
    def build(
        cls, sigmas: np.ndarray, first_step: int, solver_order: int, lower_order_final: bool,
        rows: Callable[[np.ndarray], torch.Tensor],  # (T,) float64 -> (T*F, 1, 1, 1) on the engine
    ) -> "SolverRows":
        """sigmas: (N+1,) VE sigmas of the whole schedule (last 0); slots run steps first_step..N-1."""
        n = len(sigmas) - 1
        steps = np.arange(first_step, n)
        orders = np.array(step_orders(n, first_step, solver_order, lower_order_final))
        with np.errstate(divide="ignore", invalid="ignore"):
            lam = -np.log(sigmas)  # (N+1,), +inf at sigma 0
            h = lam[steps + 1] - lam[steps]
            h_0 = lam[steps] - lam[np.maximum(steps - 1, 0)]
            h_1 = lam[np.maximum(steps - 1, 0)] - lam[np.maximum(steps - 2, 0)]
            r0 = np.where(orders >= 2, h_0 / h, 1.0)
            r1 = np.where(orders >= 3, h_1 / h, 1.0)
            phi_1 = -np.expm1(-h)  # 1 - e^-h: 1 at the last step
            d1_weight = np.select([orders == 2, orders == 3], [phi_1 / 2, 1.0 - phi_1 / h], 0.0)
            d2_weight = np.where(orders == 3, 0.5 - (h - phi_1) / h**2, 0.0)
            d1_correction = np.where(orders == 3, r0 / (r0 + r1), 0.0)
        alpha = 1.0 / np.sqrt(sigmas**2 + 1.0)  # VP alpha_t of each step
        vp_sigma = sigmas * alpha
        return cls(
            orders=tuple(int(o) for o in orders),
            lambda_=rows(lam[steps]),
            h=rows(h),
            r0=rows(r0),
            r1=rows(r1),
            sigma_ratio=rows(vp_sigma[steps + 1] / vp_sigma[steps]),
            alpha_t=rows(alpha[steps + 1]),
            phi_1=rows(phi_1),
            d1_weight=rows(d1_weight),
            d2_weight=rows(d2_weight),
            d1_correction=rows(d1_correction),
            history=solver_order - 1,
        )


def dpm_solver_pp_update(
    x: torch.Tensor, denoised: torch.Tensor, old_denoised: Sequence[torch.Tensor], c: SolverRows
) -> torch.Tensor:
    """One DPM-Solver++ multistep step for every row (see the module docstring for the formulas).

    x, denoised: (T*F, C, h, w) latents at sigma_s and their data prediction m0; old_denoised: m1 (and m2) of the
    same frames, (T*F, C, h, w) each, as many as `c.history` (rows that do not use them may hold anything finite).
    Returns x at the next sigma of each row (the clean latent at the last step).
    """
    m1 = old_denoised[0] if len(old_denoised) > 0 else denoised
    m2 = old_denoised[1] if len(old_denoised) > 1 else m1
    d1 = (denoised - m1) / c.r0  # D1 = (m0 - m1) / r0
    d1_1 = (m1 - m2) / c.r1
    d2 = (d1 - d1_1) / (c.r0 + c.r1)
    d1 = d1 + c.d1_correction * (d1 - d1_1)
    return c.sigma_ratio * x + c.alpha_t * (c.phi_1 * denoised + c.d1_weight * d1 + c.d2_weight * d2)
