"""Reduced precision runs end to end and stays close to the exact fp32 result."""

from __future__ import annotations

import copy

import torch

from tests.conftest import make_tiny_pipeline, random_images


def test_bfloat16_is_close_to_float32():
    pipe = make_tiny_pipeline(seed=31)
    lq, refs = random_images(2, 16, seed=32), random_images(2, 16, seed=33)
    kwargs = dict(num_inference_steps=3, seed=4, progress=False)
    exact = pipe(lq, refs, **kwargs).pixels
    low = copy.deepcopy(pipe).to(dtype=torch.bfloat16)
    assert low.unet.dtype == torch.bfloat16
    approx = low(lq, refs, **kwargs)
    assert approx.pixels.dtype == torch.float32 and approx.latents.dtype == torch.float32
    assert (approx.pixels - exact).abs().mean() < 0.05
    # the null-reference cache is kept per dtype: the bf16 run made and used its own bf16 entry
    entry = low._null_cache[(str(low.device), torch.bfloat16, low.latent_size)]
    assert all(k.dtype == torch.bfloat16 for k in entry.keys.values())


def test_a_cache_made_before_a_dtype_change_still_works():
    pipe = make_tiny_pipeline(seed=34)
    lq, refs = random_images(1, 16, seed=35), random_images(2, 16, seed=36)
    cache = pipe.encode_references(refs)  # float32
    low = copy.deepcopy(pipe).to(dtype=torch.bfloat16)
    kwargs = dict(num_inference_steps=2, seed=1, progress=False)
    moved = low(lq, cache.to(dtype=torch.bfloat16), **kwargs).latents
    as_is = low(lq, cache, **kwargs).latents
    assert torch.equal(moved, as_is)
