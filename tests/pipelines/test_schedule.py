"""The DDIM schedule: official timesteps, float64 arithmetic, the update rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from refface import RefFaceError
from refface.pipelines.schedule import make_scheduler, official_betas, sampling_scheduler


@pytest.fixture
def template():
    return make_scheduler(1000, 0.0015, 0.0155)


def test_timesteps_follow_the_official_spacings(template):
    trailing = sampling_scheduler(template, 50, "uniform_trailing").timesteps.tolist()
    assert trailing == list(range(999, 0, -20))  # 999, 979, ..., 19
    assert sampling_scheduler(template, 5, "uniform_trailing").timesteps.tolist() == [999, 799, 599, 399, 199]
    assert sampling_scheduler(template, 50, "uniform").timesteps.tolist() == list(range(981, 0, -20))


def test_ddim_update_is_the_official_formula(template):
    """x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev) eps, x0 = (x - sqrt(1 - a_t) eps) / sqrt(a_t)."""
    scheduler = sampling_scheduler(template, 10, "uniform_trailing")
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
    a = sampling_scheduler(template, 5, "uniform_trailing")
    b = sampling_scheduler(template, 50, "uniform")
    assert len(a.timesteps) == 5 and len(b.timesteps) == 50
    assert template.num_inference_steps is None


def test_bad_steps_and_spacing_are_refused(template):
    with pytest.raises(RefFaceError, match="between 1 and 1000"):
        sampling_scheduler(template, 0, "uniform")
    with pytest.raises(RefFaceError, match="Unknown timestep spacing"):
        sampling_scheduler(template, 10, "quadratic")
