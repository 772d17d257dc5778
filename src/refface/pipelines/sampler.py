"""The one sampling loop of every refface method: a noise prediction stepped through a scheduler.

Each method says only how it predicts the noise at a timestep (`predict(model_input, t)`: its U-Net, its
guidance); the loop around it is the same for ReF-LDM, Composite-Context and training's validation samples:
the scheduler's input scaling and step, the progress bar (named after the solver), the per-step callback,
the U-Net convolutions' transformed weights kept for the whole loop, and on a GPU the replay of the
prediction as a CUDA graph (`StepReplay`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from tqdm.auto import tqdm

from refface.pipelines.step_replay import StepReplay
from refface.speedups import kept_transformed_weights

Predict = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (model input, timestep on its device) -> eps
StepCallback = Callable[[int, int, torch.Tensor], None]  # (step index, timestep, prediction)

SOLVER_NAMES = {DDIMScheduler: "DDIM", DPMSolverMultistepScheduler: "DPM-Solver++"}


def solver_name(scheduler: SchedulerMixin) -> str:
    """The name a progress bar shows for `scheduler` (its class name for schedulers refface does not name)."""
    return SOLVER_NAMES.get(type(scheduler), type(scheduler).__name__.removesuffix("Scheduler"))


def sample(
    predict: Predict,
    scheduler: SchedulerMixin,
    latents: torch.Tensor,
    progress: bool = False,
    step_callback: StepCallback | None = None,
    cuda_graphs: bool = False,
    start: int = 0,
) -> torch.Tensor:
    """Step `latents` through the timesteps of `scheduler` (already set up for this run; it is stepped) from
    the one numbered `start` (0: all of them; later: `latents` are noised to that timestep's level).

    `predict` must be a pure function of its two tensors (whatever else it reads stays fixed during the loop)
    for `cuda_graphs` to replay it; on a CPU, or with `cuda_graphs` False, every step runs eagerly.
    """
    step = StepReplay(predict, enabled=cuda_graphs)
    if start and isinstance(scheduler, DPMSolverMultistepScheduler):
        scheduler.set_begin_index(start)  # the multistep solver counts its steps from here (DDIM keeps no count)
    timesteps = scheduler.timesteps[start:]
    with (
        tqdm(total=len(timesteps), desc=solver_name(scheduler), unit="step", disable=not progress) as bar,
        kept_transformed_weights(),  # every step runs the same U-Net: its weights are transformed once
    ):
        for index, t in enumerate(timesteps):
            prediction = step(scheduler.scale_model_input(latents, t), t.to(latents.device))
            if step_callback is not None:
                step_callback(index, int(t), prediction)
            latents = scheduler.step(prediction, t, latents).prev_sample
            bar.update()
    return latents
