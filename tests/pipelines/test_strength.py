"""`strength` below 1 (SDEdit): sampling starts from the LQ latent noised to the timestep nearest strength x T."""

from __future__ import annotations

import pytest
import torch

from refface.errors import RefFaceError
from refface.models.kl import encode_latents
from refface.models.vq import encode_unquantized
from refface.pipelines.composite import CompositeContextPipeline
from tests.conftest import make_tiny_pipeline, random_images


@pytest.fixture(scope="module")
def refldm():
    return make_tiny_pipeline(seed=5)


@pytest.fixture(scope="module")
def composite():
    torch.manual_seed(6)
    return CompositeContextPipeline.tiny(32)


def _steps(pipe, lq, references, **options) -> list[int]:
    seen = []
    pipe(lq, references, progress=False, step_callback=lambda i, t, p: seen.append(t), **options)
    return seen


@pytest.mark.parametrize("solver", ["ddim", "dpm++"])
def test_strength_one_is_the_default_bit_for_bit_and_lower_starts_later(refldm, solver):
    lq, refs = random_images(2, refldm.image_size, 1), random_images(3, refldm.image_size, 2)
    kv = refldm.encode_references(refs)
    options = {"num_inference_steps": 20, "solver": solver, "seed": [4, 9], "progress": False}
    default = refldm(lq, kv, **options)
    full = refldm(lq, kv, strength=1.0, **options)
    assert torch.equal(default.latents, full.latents) and torch.equal(default.pixels, full.pixels)
    # trailing spacing, 20 steps: 999, 949, ..., 49; 0.5 x 1000 is nearest 499, the 11th
    assert _steps(refldm, lq, kv, num_inference_steps=20, solver=solver, strength=0.5) == list(range(499, 0, -50))
    assert _steps(refldm, lq, kv, num_inference_steps=20, solver=solver, strength=0.01) == [49]
    light = refldm(lq, kv, strength=0.5, **options)
    assert not torch.equal(light.latents, default.latents)
    single = refldm(lq[1:], kv, strength=0.5, **{**options, "seed": [9]})  # each photo its own noise, as before
    assert torch.allclose(single.latents[0], light.latents[1], atol=1e-5)


@pytest.mark.slow
def test_composite_strength_one_is_the_default_and_lower_starts_later(composite):
    lq, refs = random_images(3, composite.image_size, 3), random_images(2, composite.image_size, 4)
    features = composite.encode_references(refs)
    default = composite(lq, features, num_inference_steps=10, progress=False)
    assert torch.equal(
        default.pixels, composite(lq, features, num_inference_steps=10, strength=1, progress=False).pixels
    )
    # its scheduler's leading spacing, 10 steps: 901, 801, ..., 1; 0.3 x 1000 is nearest 301
    assert _steps(composite, lq, features, num_inference_steps=10, strength=0.3) == [301, 201, 101, 1]


def _zero_noise_prediction(unet) -> None:
    """A U-Net that always predicts zero noise: sampling then only removes the noise it started from."""
    torch.nn.init.zeros_(unet.conv_out.weight)
    torch.nn.init.zeros_(unet.conv_out.bias)


@pytest.mark.slow
def test_as_strength_falls_the_result_approaches_the_lq_latent():
    """With a model that predicts no noise, a DDIM run from timestep t returns the LQ latent plus the start noise
    scaled by sqrt((1 - abar_t) / abar_t): the lower the strength, the closer to the LQ latent, and starting
    from pure noise (strength 1) is far from it. A wrong start timestep or noise level breaks the order."""
    pipe = make_tiny_pipeline(seed=7)
    _zero_noise_prediction(pipe.unet)
    lq = random_images(2, pipe.image_size, 5)
    target = encode_unquantized(pipe.vqvae, lq).float()
    distances = []
    for strength in (1.0, 0.9, 0.6, 0.3, 0.1):
        latents = pipe(lq, None, num_inference_steps=30, strength=strength, progress=False).latents
        distances.append((latents - target).abs().mean().item())
    assert all(a > b for a, b in zip(distances, distances[1:], strict=False)), distances
    # the last start (t = 99 of 30 trailing steps) leaves sqrt((1 - abar) / abar) of the unit noise: E|n| = 0.8
    abar = pipe.scheduler.alphas_cumprod[99].item()
    expected = 0.7979 * ((1 - abar) / abar) ** 0.5 * pipe.scheduler.alphas_cumprod[0].item() ** 0.5
    assert distances[-1] == pytest.approx(expected, rel=0.15)

    composite = CompositeContextPipeline.tiny(32)
    _zero_noise_prediction(composite.unet)
    lq = random_images(2, composite.image_size, 6)
    target = encode_latents(composite.vae, lq).float()
    distances = [
        (composite(lq, None, num_inference_steps=20, strength=s, progress=False).latents - target).abs().mean().item()
        for s in (1.0, 0.7, 0.4, 0.1)
    ]
    assert all(a > b for a, b in zip(distances, distances[1:], strict=False)), distances


@pytest.mark.parametrize("strength", [0.0, -0.2, 1.5, float("nan")])
def test_a_strength_outside_zero_to_one_is_one_sentence(refldm, composite, strength):
    lq = random_images(1, refldm.image_size, 8)
    for pipe in (refldm, composite):
        with pytest.raises(RefFaceError, match=r"^The strength must be greater than 0 and at most 1, got "):
            pipe(random_images(1, pipe.image_size, 8) if pipe is composite else lq, None, strength=strength)
