"""The one sampling loop: what it steps, what it reports, and the solver its progress bar names."""

from __future__ import annotations

import io

import pytest
import torch
from diffusers import DDIMScheduler

from refface.pipelines.sampler import sample, solver_name
from refface.pipelines.schedule import make_scheduler
from tests.conftest import refldm_scheduler

TEMPLATE = make_scheduler(1000, 0.0015, 0.0155)


def _predict(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A stand-in noise prediction that depends on both inputs."""
    return torch.tanh(x * 0.7 + t.float() / 1000)


@pytest.mark.parametrize(("solver", "steps"), [("ddim", 5), ("dpm++", 4), ("ddim", 1)])
def test_sample_steps_like_a_written_out_loop(solver, steps):
    latents = torch.randn(3, 4, 6, 5, generator=torch.Generator().manual_seed(steps))
    seen = []
    got = sample(_predict, refldm_scheduler(TEMPLATE, steps, "uniform", solver), latents,
                 step_callback=lambda i, t, eps: seen.append((i, t, eps.shape)))  # fmt: skip
    scheduler = refldm_scheduler(TEMPLATE, steps, "uniform", solver)
    want = latents
    for t in scheduler.timesteps:
        want = scheduler.step(_predict(want, t), t, want).prev_sample
    assert torch.equal(got, want)
    assert seen == [(i, int(t), latents.shape) for i, t in enumerate(scheduler.timesteps)]


def test_the_progress_bar_names_the_solver(monkeypatch):
    assert solver_name(refldm_scheduler(TEMPLATE, 3, "uniform_trailing", "ddim")) == "DDIM"
    assert solver_name(refldm_scheduler(TEMPLATE, 3, "uniform_trailing", "dpm++")) == "DPM-Solver++"
    written = io.StringIO()
    monkeypatch.setattr("sys.stderr", written)
    sample(
        _predict, refldm_scheduler(TEMPLATE, 3, "uniform_trailing", "dpm++"), torch.randn(1, 4, 4, 4), progress=True
    )
    assert "DPM-Solver++" in written.getvalue() and "DDIM" not in written.getvalue()


def test_schedulers_refface_does_not_name_show_their_class():
    from diffusers import EulerDiscreteScheduler

    assert solver_name(EulerDiscreteScheduler()) == "EulerDiscrete"
    assert solver_name(DDIMScheduler()) == "DDIM"
