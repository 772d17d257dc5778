"""The ReF-LDM noise schedule on diffusers' DDIMScheduler, with the official float64 arithmetic.

DDIM is the exact mode (the official sampler). DPM-Solver++ (2nd order, diffusers) on the same
noise schedule is the opt-in fast mode: it follows the same sampling ODE in fewer steps, but its
output is not the official one.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

from refface.errors import RefFaceError
from refface.pipelines.base import SPACINGS, SamplingOptions


def official_betas(num_train_timesteps: int, linear_start: float, linear_end: float) -> np.ndarray:
    """betas = linspace(sqrt(start), sqrt(end), T)^2 in float64, as the official code computes them."""
    return np.linspace(linear_start**0.5, linear_end**0.5, num_train_timesteps, dtype=np.float64) ** 2


def make_scheduler(num_train_timesteps: int, linear_start: float, linear_end: float) -> DDIMScheduler:
    """DDIM with eps prediction, no clipping, and alpha_prev = alphas_cumprod[0] at the last step."""
    return DDIMScheduler(
        num_train_timesteps=num_train_timesteps,
        trained_betas=official_betas(num_train_timesteps, linear_start, linear_end).tolist(),
        clip_sample=False,
        set_alpha_to_one=False,
        prediction_type="epsilon",
        timestep_spacing="trailing",
        steps_offset=0,
    )


def use_float64_cumprod(scheduler: DDIMScheduler) -> DDIMScheduler:
    """Recompute alphas_cumprod in float64 (diffusers uses float32), as the official code does.

    Over 1000 steps the float32 product drifts by ~6e-7, which moves the final latent by ~1e-4.
    """
    betas = np.asarray(scheduler.config.trained_betas, dtype=np.float64)
    scheduler.alphas_cumprod = torch.from_numpy(np.cumprod(1.0 - betas)).to(torch.float32)
    scheduler.final_alpha_cumprod = (
        torch.tensor(1.0) if scheduler.config.set_alpha_to_one else scheduler.alphas_cumprod[0]
    )
    return scheduler


def check_step_count(steps: int, scheduler: DDIMScheduler) -> None:
    """A model trained on T timesteps samples at most T steps (the options already hold at least 1)."""
    total = int(scheduler.config.num_train_timesteps)
    if steps > total:
        raise RefFaceError(f"The number of steps must be between 1 and {total}, got {steps}.")


def sampling_scheduler(
    template: DDIMScheduler, options: SamplingOptions
) -> DDIMScheduler | DPMSolverMultistepScheduler:
    """A private scheduler set up for one sampling run (schedulers are stateful) on `template`'s noise schedule,
    with the options' steps, spacing and solver."""
    steps = options.steps
    check_step_count(steps, template)
    total = template.config.num_train_timesteps
    timestep_spacing, offset = SPACINGS[options.spacing]
    if options.solver == "dpm++":
        solver_scheduler = DPMSolverMultistepScheduler(
            num_train_timesteps=total,
            trained_betas=template.config.trained_betas,
            prediction_type=template.config.prediction_type,
            algorithm_type="dpmsolver++",
            solver_order=2,
            lower_order_final=True,
            final_sigmas_type="sigma_min",  # end at t = 0's noise level, as the official DDIM does
            timestep_spacing=timestep_spacing,
            steps_offset=offset,
        )
        solver_scheduler.set_timesteps(steps)
        return solver_scheduler
    scheduler = copy.deepcopy(template)
    scheduler.register_to_config(timestep_spacing=timestep_spacing, steps_offset=offset)
    use_float64_cumprod(scheduler)
    scheduler.set_timesteps(steps)
    return scheduler


def strength_start(scheduler: DDIMScheduler | DPMSolverMultistepScheduler, strength: float) -> int | None:
    """Where sampling starts for `strength` in (0, 1] (SDEdit): None for 1 (all steps, from pure noise); below 1
    the index of the set-up scheduler's timestep nearest strength x T, from which the LQ latent, noised to that
    level, is sampled (a lighter touch that keeps the input's structure). `strength` comes from checked
    `SamplingOptions`."""
    if strength == 1.0:
        return None
    target = strength * scheduler.config.num_train_timesteps
    return int(torch.argmin((scheduler.timesteps.double() - target).abs()))


def noised_to(
    scheduler: DDIMScheduler | DPMSolverMultistepScheduler, start: int, clean: torch.Tensor, noise: torch.Tensor
) -> torch.Tensor:
    """`clean` latents noised with `noise` to the level of the scheduler's timestep number `start` (float32)."""
    timestep = scheduler.timesteps[start : start + 1]
    return scheduler.add_noise(clean.float(), noise.to(clean.device, torch.float32), timestep.to(clean.device))
