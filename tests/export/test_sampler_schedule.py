"""The numpy sampler's schedule against refface's (diffusers' DDIMScheduler with the float64 cumulative product)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from refface.export.onnx_sampler import OnnxSamplerError, Schedule, ddim_timesteps, strength_start, to_8bit
from refface.imaging import to_pil
from refface.pipelines.schedule import make_scheduler, noised_to
from refface.pipelines.schedule import strength_start as refface_strength_start
from tests.conftest import refldm_scheduler

TEMPLATE = make_scheduler(1000, 0.0015, 0.0155)


def _refface(steps: int, spacing: str):
    return refldm_scheduler(TEMPLATE, steps, spacing)


def _alphas(scheduler) -> np.ndarray:
    return scheduler.alphas_cumprod.numpy().astype(np.float32)


@pytest.mark.parametrize("spacing", ["uniform_trailing", "uniform"])
@pytest.mark.parametrize("steps", [1, 5, 7, 50, 333, 1000])
def test_timesteps_match(spacing, steps):
    assert ddim_timesteps(1000, steps, spacing).tolist() == _refface(steps, spacing).timesteps.tolist()


@pytest.mark.parametrize(("steps", "spacing"), [(5, "uniform_trailing"), (7, "uniform_trailing"), (10, "uniform")])
def test_ddim_steps_match(steps, spacing):
    scheduler = _refface(steps, spacing)
    schedule = Schedule(_alphas(scheduler), steps)
    generator = torch.Generator().manual_seed(steps)
    latents = torch.randn(2, 4, 8, 8, generator=generator) * 3
    ours = latents.numpy()
    for t in scheduler.timesteps:
        eps = torch.randn(2, 4, 8, 8, generator=generator)
        latents = scheduler.step(eps, t, latents).prev_sample
        ours = schedule.step(eps.numpy(), int(t), ours)
        assert ours.dtype == np.float32
    scale = float(latents.abs().max())
    assert np.abs(ours - latents.numpy()).max() <= 1e-6 * max(scale, 1.0)


@pytest.mark.parametrize("strength", [1.0, 0.9, 0.5, 0.41, 0.05])
def test_strength_start_and_noise_match(strength):
    scheduler = _refface(20, "uniform_trailing")
    timesteps = scheduler.timesteps.numpy()
    start = strength_start(timesteps, 1000, strength)
    assert start == (refface_strength_start(scheduler, strength) or 0)
    clean, noise = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    want = noised_to(scheduler, start, clean, noise)
    got = Schedule(_alphas(scheduler), 20).add_noise(clean.numpy(), noise.numpy(), int(timesteps[start]))
    assert np.abs(got - want.numpy()).max() <= 1e-6


def test_eight_bit_output_truncates_like_refface():
    decoded = torch.linspace(-1.2, 1.2, 3 * 4 * 5).reshape(1, 3, 4, 5)
    want = np.asarray(to_pil(((decoded + 1) / 2).clamp(0, 1))[0])
    assert np.array_equal(to_8bit(decoded.numpy())[0], want)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: ddim_timesteps(1000, 0, "uniform"), "between 1 and 1000"),
        (lambda: ddim_timesteps(1000, 5, "linspace"), "Unknown timestep spacing"),
        (lambda: strength_start(np.arange(5), 1000, 0.0), "greater than 0"),
        (lambda: strength_start(np.arange(5), 1000, 1.5), "at most 1"),
    ],
)
def test_bad_sampling_settings_are_one_sentence(call, message):
    with pytest.raises(OnnxSamplerError, match=message):
        call()
