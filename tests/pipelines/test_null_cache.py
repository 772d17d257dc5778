"""The null condition of guidance is made once per U-Net weights: a weight change makes it anew."""

from __future__ import annotations

import torch

from tests.conftest import make_tiny_pipeline, random_images


def _keys(cache) -> list[torch.Tensor]:
    return [cache.keys[name].clone() for name in sorted(cache.keys)]


def _differ(first: list[torch.Tensor], second: list[torch.Tensor]) -> bool:
    return any(not torch.equal(a, b) for a, b in zip(first, second, strict=True))


def test_null_condition_is_reused_while_the_weights_stay(monkeypatch):
    pipe = make_tiny_pipeline(seed=3)
    passes = []
    original = pipe._reference_pass
    monkeypatch.setattr(pipe, "_reference_pass", lambda latents: passes.append(latents.shape) or original(latents))
    first = _keys(pipe.null_references(2))
    pipe(random_images(2, 16, seed=1), random_images(3, 16, seed=2), num_inference_steps=2, progress=False)
    again = _keys(pipe.null_references(2))
    assert len(passes) == 2  # the null pass once, plus the references' own pass
    assert not _differ(first, again)


def test_a_weight_change_after_the_first_call_changes_the_null_condition():
    pipe = make_tiny_pipeline(seed=4)
    lq, refs = random_images(2, 16, seed=5), random_images(2, 16, seed=6)
    kwargs = dict(num_inference_steps=3, seed=1, progress=False)
    before_keys = _keys(pipe.null_references(2))
    before = pipe(lq, refs, **kwargs).pixels

    with torch.no_grad():  # fine-tuning writes the weights in place
        for parameter in pipe.unet.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.02)
    tuned_keys = _keys(pipe.null_references(2))
    assert _differ(before_keys, tuned_keys)
    tuned = pipe(lq, refs, **kwargs).pixels
    fresh = make_tiny_pipeline(seed=4)  # the same tuned weights in a pipeline that never saw the old ones
    fresh.unet.load_state_dict(pipe.unet.state_dict())
    torch.testing.assert_close(tuned, fresh(lq, refs, **kwargs).pixels, rtol=0, atol=0)
    assert not torch.equal(tuned, before)

    other = make_tiny_pipeline(seed=9)  # load_state_dict of other weights
    pipe.unet.load_state_dict(other.unet.state_dict())
    assert _differ(tuned_keys, _keys(pipe.null_references(2)))
    assert not _differ(_keys(pipe.null_references(2)), _keys(other.null_references(2)))
