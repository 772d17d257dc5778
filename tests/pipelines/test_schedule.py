"""The DDIM schedule: official timesteps, float64 arithmetic, the update rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from refface import RefFaceError
from refface.pipelines.base import REFLDM_OPTIONS
from refface.pipelines.schedule import make_scheduler, official_betas, sampling_scheduler
from tests.conftest import refldm_scheduler


@pytest.fixture
def template():
    return make_scheduler(1000, 0.0015, 0.0155)


def test_timesteps_follow_the_official_spacings(template):
    trailing = refldm_scheduler(template, 50, "uniform_trailing").timesteps.tolist()
    assert trailing == list(range(999, 0, -20))  # 999, 979, ..., 19
    assert refldm_scheduler(template, 5, "uniform_trailing").timesteps.tolist() == [999, 799, 599, 399, 199]
    assert refldm_scheduler(template, 50, "uniform").timesteps.tolist() == list(range(981, 0, -20))


def test_ddim_update_is_the_official_formula(template):
    """x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev) eps, x0 = (x - sqrt(1 - a_t) eps) / sqrt(a_t)."""
    scheduler = refldm_scheduler(template, 10, "uniform_trailing")
    cumprod = np.cumprod(1 - official_betas(1000, 0.0015, 0.0155))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 5, 6, generator=g)
    for i, t in enumerate(scheduler.timesteps.tolist()):
        eps = torch.randn(x.shape, generator=g)
        a_t = cumprod[t]
        a_prev = cumprod[scheduler.timesteps[i + 1]] if i + 1 < len(scheduler.timesteps) else cumprod[0]
        x0 = (x.double() - np.sqrt(1 - a_t) * eps.double()) / np.sqrt(a_t)
        want = np.sqrt(a_prev) * x0 + np.sqrt(1 - a_prev) * eps.double()
        x = scheduler.step(eps, t, x).prev_sample
        assert torch.allclose(x.double(), want, rtol=1e-5, atol=1e-5)


def test_sampling_copies_do_not_share_state(template):
    a = refldm_scheduler(template, 5, "uniform_trailing")
    b = refldm_scheduler(template, 50, "uniform")
    assert len(a.timesteps) == 5 and len(b.timesteps) == 50
    assert template.num_inference_steps is None


def test_bad_steps_and_spacing_are_refused(template):
    with pytest.raises(RefFaceError, match="at least 1, got 0"):
        sampling_scheduler(template, REFLDM_OPTIONS.with_changes(steps=0, spacing="uniform"))
    with pytest.raises(RefFaceError, match="between 1 and 1000, got 1001"):
        sampling_scheduler(template, REFLDM_OPTIONS.with_changes(steps=1001, spacing="uniform"))
    with pytest.raises(RefFaceError, match="between 1 and 100, got 200"):  # a model trained on fewer timesteps
        sampling_scheduler(make_scheduler(100, 0.0015, 0.0155), REFLDM_OPTIONS.with_changes(steps=200))
    with pytest.raises(RefFaceError, match="Unknown timestep spacing"):
        sampling_scheduler(template, REFLDM_OPTIONS.with_changes(steps=10, spacing="quadratic"))


def _gaussian_eps(mean: torch.Tensor, spread: float, cumprod: np.ndarray):
    """The exact noise prediction when the data are N(mean, spread^2 I): the probability-flow ODE is known."""

    def eps(x: torch.Tensor, t: int) -> torch.Tensor:
        a = float(cumprod[t])
        return np.sqrt(1 - a) * (x - np.sqrt(a) * mean) / (a * spread**2 + 1 - a)

    return eps


def _solve(template, solver: str, steps: int, x: torch.Tensor, eps) -> torch.Tensor:
    scheduler = refldm_scheduler(template, steps, "uniform_trailing", solver)
    for t in scheduler.timesteps.tolist():
        x = scheduler.step(eps(x, int(t)), t, x).prev_sample
    return x


@pytest.mark.parametrize("spread", [0.3, 1.0])
def test_dpm_solver_integrates_the_same_ode(template, spread):
    """Fast mode samples the probability-flow ODE of the same noise schedule: with more steps it converges
    to the 1000-step DDIM solution (a wrong schedule or parameterisation would converge elsewhere)."""
    cumprod = np.cumprod(1 - official_betas(1000, 0.0015, 0.0155))
    g = torch.Generator().manual_seed(3)
    mean = torch.randn(2, 4, 6, 6, generator=g)
    eps = _gaussian_eps(mean, spread, cumprod)
    start = torch.randn(2, 4, 6, 6, generator=g)
    exact = _solve(template, "ddim", 1000, start, eps)
    errors = {steps: (_solve(template, "dpm++", steps, start, eps) - exact).abs().max() for steps in (20, 250)}
    assert errors[250] < errors[20] / 5
    assert errors[250] < 0.01 * exact.abs().max()
    assert refldm_scheduler(template, 20, "uniform_trailing", "dpm++").timesteps.tolist() == list(range(999, 0, -50))


def test_dpm_solver_beats_ddim_at_few_steps(template):
    cumprod = np.cumprod(1 - official_betas(1000, 0.0015, 0.0155))
    g = torch.Generator().manual_seed(4)
    mean = torch.randn(3, 4, 6, 6, generator=g)
    eps = _gaussian_eps(mean, 0.3, cumprod)
    start = torch.randn(3, 4, 6, 6, generator=g)
    exact = _solve(template, "ddim", 1000, start, eps)
    dpm, ddim = (_solve(template, solver, 20, start, eps) for solver in ("dpm++", "ddim"))
    assert (dpm - exact).abs().max() < 0.7 * (ddim - exact).abs().max()


def test_unknown_solver_is_refused(template):
    with pytest.raises(RefFaceError, match="Unknown solver 'euler'; choose one of ddim, dpm\\+\\+"):
        refldm_scheduler(template, 10, "uniform_trailing", "euler")
