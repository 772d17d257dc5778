"""Composite-Context inference: dual guidance (eq. 5), the multi-reference ensemble (eq. 6), colour fix, save/load."""

from __future__ import annotations

import copy

import pytest
import torch
from PIL import Image

from refface.errors import RefFaceError
from refface.models.composite_context import ReferenceFeatures
from refface.pipelines.base import REFLDM_OPTIONS
from refface.pipelines.color_fix import adain_color_fix
from refface.pipelines.composite import CompositeContextPipeline, DualGuidance, guided_prediction, sample_composite
from refface.pipelines.loading import load_composite, load_saved


@pytest.fixture(scope="module")
def pipe() -> CompositeContextPipeline:
    torch.manual_seed(0)
    pipe = CompositeContextPipeline.tiny(32)
    with torch.no_grad():  # make every part of the context matter (a fresh model's null token is zero)
        pipe.context.null_token.normal_()
    return pipe


def _images(count: int, seed: int, size: int = 32) -> torch.Tensor:
    return torch.rand(count, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


class CountingDenoiser(torch.nn.Module):
    """Wraps a denoiser and records the batch size of every call."""

    def __init__(self, denoiser) -> None:
        super().__init__()
        self.inner, self.calls = denoiser, []
        self.context = denoiser.context

    def forward(self, noisy, *args, **kwargs):
        self.calls.append(noisy.shape[0])
        return self.inner(noisy, *args, **kwargs)


def _inputs(pipe, batch: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, 4, 16, 16, generator=generator)
    lq = torch.randn(batch, 4, 16, 16, generator=generator)
    return latents, lq


def _without_references(denoiser, latents, lq, times):
    """e(z, 0, 0) and e(z, lq, 0), evaluated directly: every condition dropped, then all but the LQ."""
    off, on = torch.zeros(len(times), dtype=torch.bool), torch.ones(len(times), dtype=torch.bool)
    blank = ReferenceFeatures(torch.zeros(len(times), 512), torch.zeros(len(times), 17, 64))
    e_null = denoiser(latents, lq, blank, times, keep_lq=off, keep_identity=off, keep_facial=off)
    return e_null, denoiser(latents, lq, blank, times, keep_lq=on, keep_identity=off, keep_facial=off)


@pytest.mark.parametrize(("s_i", "s_c", "refs"), [(1.5, 2.0, 3), (1.2, 1.2, 2), (1.3, 0.7, 1), (1.8, 1.0, 0)])
def test_guidance_is_equation_5_and_6_evaluated_directly(pipe, s_i, s_c, refs):
    denoiser = pipe.denoiser
    latents, lq = _inputs(pipe, 2, seed=refs)
    features = pipe.encode_references(_images(refs, seed=10)) if refs else None
    t = torch.tensor(500)
    counting = CountingDenoiser(denoiser)
    with torch.no_grad():
        got = guided_prediction(counting, latents, lq, features, t, DualGuidance(s_i, s_c))
        times = t.expand(2)
        e_null, e_lq = _without_references(denoiser, latents, lq, times)
        if refs:
            e_refs = [denoiser(latents, lq, features.take([i, i]), times) for i in range(refs)]
            expected = (1 - s_i) * e_null + (s_i - s_c) * e_lq + s_c / refs * sum(e_refs)
        else:
            expected = (1 - s_i) * e_null + s_i * e_lq
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    # one batched call per step; the e(z, lq, 0) branch is skipped when s_i = s_c
    branches = 1 + (s_i != s_c) + refs if refs else 2
    assert counting.calls == [2 * branches]


@pytest.mark.parametrize(("context", "identity", "facial"), [("identity", True, False), ("appearance", False, True)])
def test_one_part_of_the_context_guides_as_the_paper_s_table_5(pipe, context, identity, facial):
    denoiser = pipe.denoiser
    latents, lq = _inputs(pipe, 2, seed=21)
    features = pipe.encode_references(_images(2, seed=22))
    t, s_i, s_c = torch.tensor(300), 1.4, 1.1
    with torch.no_grad():
        got = guided_prediction(denoiser, latents, lq, features, t, DualGuidance(s_i, s_c, context))
        both = guided_prediction(denoiser, latents, lq, features, t, DualGuidance(s_i, s_c))
        times = t.expand(2)
        e_null, e_lq = _without_references(denoiser, latents, lq, times)
        off, on = torch.zeros(2, dtype=torch.bool), torch.ones(2, dtype=torch.bool)
        kept = {"keep_lq": on, "keep_identity": on if identity else off, "keep_facial": on if facial else off}
        e_refs = [denoiser(latents, lq, features.take([i, i]), times, **kept) for i in range(2)]
        expected = (1 - s_i) * e_null + (s_i - s_c) * e_lq + s_c / 2 * sum(e_refs)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert (got - both).abs().max() > 1e-4  # the masked part mattered


def test_n_identical_references_equal_one(pipe):
    latents, lq = _inputs(pipe, 3, seed=5)
    features = pipe.encode_references(_images(1, seed=11))
    guidance = DualGuidance(1.4, 1.9)
    with torch.no_grad():
        one = guided_prediction(pipe.denoiser, latents, lq, features, torch.tensor(250), guidance)
        four = guided_prediction(pipe.denoiser, latents, lq, features.take([0, 0, 0, 0]), torch.tensor(250), guidance)
        other = guided_prediction(
            pipe.denoiser, latents, lq, pipe.encode_references(_images(1, seed=12)), torch.tensor(250), guidance
        )
    torch.testing.assert_close(four, one, rtol=1e-4, atol=1e-5)
    assert (other - one).abs().max() > 1e-4


def test_a_sampling_loop_plans_its_branches_once_and_matches_per_step_guidance(pipe):
    _, lq = _inputs(pipe, 2, seed=14)
    noise = torch.randn(lq.shape, generator=torch.Generator().manual_seed(15))
    features, guidance = pipe.encode_references(_images(2, seed=16)), DualGuidance(1.5, 1.1)
    counting = CountingDenoiser(pipe.denoiser)
    with torch.no_grad():
        got = sample_composite(counting, pipe.scheduler, lq, features, noise, 3, guidance)
        scheduler = copy.deepcopy(pipe.scheduler)
        scheduler.set_timesteps(3)
        latents = noise * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            eps = guided_prediction(pipe.denoiser, latents, lq, features, t, guidance)
            latents = scheduler.step(eps, t, latents).prev_sample
    assert torch.equal(got, latents)
    assert counting.calls == [2 * 4] * 3  # null, LQ-only and 2 reference branches for 2 photos, once per step


def test_guidance_weights_sum_to_one():
    for s_i, s_c, count in [(1.2, 1.2, 5), (2.0, 0.5, 1), (1.0, 3.0, 2), (1.5, 1.5, 0)]:
        null, lq, each = DualGuidance(s_i, s_c).weights(count)
        assert null + lq + each * count == pytest.approx(1.0)


def test_colour_fix_matches_each_channel_mean_and_spread():
    generator = torch.Generator().manual_seed(3)
    image = torch.rand(2, 3, 24, 24, generator=generator) * 0.5 + 0.25
    style = torch.rand(2, 3, 12, 12, generator=generator) * 0.4 + 0.3
    fixed = adain_color_fix(image, style)
    torch.testing.assert_close(fixed.mean(dim=(2, 3)), style.mean(dim=(2, 3)), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fixed.std(dim=(2, 3)), style.std(dim=(2, 3)), rtol=1e-3, atol=1e-3)
    # the spatial pattern is the image's: correlation with the original stays 1 per channel
    centred = (fixed - fixed.mean(dim=(2, 3), keepdim=True)) * (image - image.mean(dim=(2, 3), keepdim=True))
    assert (centred.sum(dim=(2, 3)) > 0).all()
    with pytest.raises(RefFaceError, match="same batch and channels"):
        adain_color_fix(image, style[:1])


def test_restoration_is_per_photo_reusable_and_survives_save_and_load(pipe, tmp_path):
    lq, refs = _images(2, seed=20), _images(3, seed=21)
    features = pipe.encode_references(refs)
    both = pipe(lq, features, num_inference_steps=3, seed=[7, 8], progress=False)
    first = pipe(lq[:1], refs, num_inference_steps=3, seed=7, progress=False)  # images instead of features
    assert both.pixels.shape == (2, 3, 32, 32)
    torch.testing.assert_close(both.pixels[:1], first.pixels, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(both.pixels.mean(dim=(2, 3)), ((lq + 1) / 2).mean(dim=(2, 3)), rtol=0.05, atol=0.02)
    unfixed = pipe(lq, features, num_inference_steps=3, seed=[7, 8], color_fix=False, progress=False)
    assert (unfixed.pixels - both.pixels).abs().max() > 1e-3
    without = pipe(lq, None, num_inference_steps=3, seed=[7, 8], progress=False)
    assert (without.pixels - both.pixels).abs().max() > 1e-4

    pipe.save_pretrained(tmp_path / "model")
    loaded = load_composite(tmp_path / "model")
    again = loaded(lq, refs, num_inference_steps=3, seed=[7, 8], progress=False)
    torch.testing.assert_close(again.pixels, both.pixels, rtol=0, atol=0)
    assert isinstance(again.images[0], Image.Image) and again.images[0].size == (32, 32)
    with pytest.raises(RefFaceError, match=r"holds a CompositeContextPipeline, not a RefLDMPipeline \(ReF-LDM\)"):
        load_saved(tmp_path / "model")


def test_bad_calls_are_one_sentence(pipe, tmp_path):
    with pytest.raises(RefFaceError, match="2 seeds for 1 images"):
        pipe(_images(1, seed=1), None, num_inference_steps=2, seed=[1, 2], progress=False)
    with pytest.raises(RefFaceError, match="at least 1, got 0"):
        pipe(_images(1, seed=1), None, num_inference_steps=0, progress=False)
    with pytest.raises(RefFaceError, match="between 1 and 1000, got 1001"):
        pipe(_images(1, seed=1), None, num_inference_steps=1001, progress=False)
    with pytest.raises(RefFaceError, match="options are ReF-LDM's; a Composite-Context pipeline takes its own"):
        pipe(_images(1, seed=1), None, options=REFLDM_OPTIONS, progress=False)
    with pytest.raises(RefFaceError, match="must be 32x32"):
        pipe(_images(1, seed=1, size=40), None, num_inference_steps=2, progress=False)
    with pytest.raises(RefFaceError, match="no readable model_index.json"):
        load_composite(tmp_path)
