"""The training step: per-item reference caches equal the inference path, gradients flow through both passes."""

from __future__ import annotations

import pytest
import torch

from refface import RefLDMPipeline, tiny_architecture
from refface.models.cache_kv import ReferenceBatch, ReferenceKV
from refface.models.reference_integration import CacheKVDenoiser
from refface.models.unet import denoise
from refface.models.vq import encode_unquantized
from refface.train.diffusion_step import (
    LatentBatch,
    diffusion_step,
    drop_conditions,
    encode_batch,
)


@pytest.fixture
def pipe():
    torch.manual_seed(0)
    return RefLDMPipeline.from_architecture(tiny_architecture())


def _images(batch, refs, size=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    gt = torch.rand(batch, 3, size, size, generator=g) * 2 - 1
    lq = torch.rand(batch, 3, size, size, generator=g) * 2 - 1
    ref = torch.rand(batch, refs, 3, size, size, generator=g) * 2 - 1
    return gt, lq, ref


@pytest.mark.parametrize(("batch", "refs"), [(1, 1), (2, 3), (3, 2)])
def test_each_item_attends_to_its_own_references_as_at_inference(pipe, batch, refs):
    gt, lq, ref = _images(batch, refs)
    latents = encode_batch(pipe.vqvae, gt, lq, ref)
    assert latents.refs.shape == (batch, refs, *latents.gt.shape[1:])
    sample = torch.randn(batch, 8, 8, 8)
    t = torch.tensor([5, 400, 999][:batch])
    with torch.no_grad():
        together = denoise(
            pipe.unet, sample, t, CacheKVDenoiser(pipe.unet, latents.refs.shape[1]).encode_references(latents.refs)
        )
        for item in range(batch):
            # the inference path: the item's references encoded as one wide image, one reference pass
            wide = torch.cat(list(ref[item]), dim=-1)[None]
            per_ref = torch.cat(encode_unquantized(pipe.vqvae, wide).split(8, dim=-1), dim=0)
            cache = pipe._reference_pass(per_ref)
            alone = denoise(pipe.unet, sample[item : item + 1], t[item : item + 1], ReferenceBatch(((1, cache),)))
            torch.testing.assert_close(together[item : item + 1], alone, atol=1e-5, rtol=1e-5)


def test_references_change_the_prediction(pipe):
    gt, lq, ref = _images(2, 2)
    latents = encode_batch(pipe.vqvae, gt, lq, ref)
    sample, t = torch.randn(2, 8, 8, 8), torch.tensor([10, 10])
    with torch.no_grad():
        with_refs = denoise(
            pipe.unet, sample, t, CacheKVDenoiser(pipe.unet, latents.refs.shape[1]).encode_references(latents.refs)
        )
        without = denoise(pipe.unet, sample, t, None)
    assert (with_refs - without).abs().mean() > 1e-3


def _detached(context: ReferenceBatch) -> ReferenceBatch:
    def frozen(cache: ReferenceKV) -> ReferenceKV:
        keys = {name: k.detach() for name, k in cache.keys.items()}
        return ReferenceKV(keys, {name: v.detach() for name, v in cache.values.items()}, cache.num_references)

    return ReferenceBatch(tuple((count, frozen(cache)) for count, cache in context.segments))


def test_gradients_reach_the_unet_through_the_reference_pass(pipe):
    gt, lq, ref = _images(2, 2)
    latents = encode_batch(pipe.vqvae, gt, lq, ref)
    pipe.unet.train().requires_grad_(True)
    sample = torch.randn(2, 8, 8, 8, generator=torch.Generator().manual_seed(3))

    def grads(detach_refs: bool) -> torch.Tensor:
        pipe.unet.zero_grad()
        context = CacheKVDenoiser(pipe.unet, latents.refs.shape[1]).encode_references(latents.refs)
        eps = denoise(pipe.unet, sample, torch.tensor([50, 50]), _detached(context) if detach_refs else context)
        eps.square().mean().backward()
        return torch.cat([p.grad.flatten() for p in pipe.unet.parameters() if p.grad is not None])

    assert not torch.allclose(grads(False), grads(True))  # the reference pass contributes gradient


def test_step_is_reproducible_from_its_generator_and_loss_is_finite(pipe):
    gt, lq, ref = _images(3, 2)
    latents = encode_batch(pipe.vqvae, gt, lq, ref)
    alphas = torch.from_numpy(pipe.scheduler.alphas_cumprod.numpy()).double()
    outputs = [
        diffusion_step(CacheKVDenoiser(pipe.unet, 2), latents, alphas, torch.Generator().manual_seed(7), 0.1)
        for _ in range(2)
    ]
    assert torch.equal(outputs[0].loss, outputs[1].loss) and torch.equal(outputs[0].timesteps, outputs[1].timesteps)
    other = diffusion_step(CacheKVDenoiser(pipe.unet, 2), latents, alphas, torch.Generator().manual_seed(8), 0.1)
    assert not torch.equal(outputs[0].loss, other.loss)
    assert torch.isfinite(outputs[0].loss) and outputs[0].identity == 0.0


def test_condition_dropout_zeroes_lq_and_references_independently():
    g = torch.Generator().manual_seed(0)
    latents = LatentBatch(torch.randn(400, 2, 2, 2), torch.randn(400, 2, 2, 2) + 3, torch.randn(400, 2, 2, 2, 2) + 3)
    dropped = drop_conditions(latents, 0.25, g)
    lq_zero = (dropped.lq.flatten(1) == 0).all(1)
    refs_zero = (dropped.refs.flatten(1) == 0).all(1)
    assert 0.17 < lq_zero.float().mean() < 0.33 and 0.17 < refs_zero.float().mean() < 0.33
    assert not torch.equal(lq_zero, refs_zero)
    kept = ~lq_zero
    assert torch.equal(dropped.lq[kept], latents.lq[kept]) and torch.equal(dropped.gt, latents.gt)
    assert torch.equal(drop_conditions(latents, 0.0, g).lq, latents.lq)


class _Recording(torch.nn.Module):
    """A denoiser that predicts zero noise and keeps what it was given."""

    def forward(self, noisy, lq, refs, timesteps):
        self.noisy, self.timesteps = noisy, timesteps
        return torch.zeros_like(noisy)


@pytest.mark.parametrize(("loss", "expected"), [("l1", lambda n: n.abs().mean()), ("l2", lambda n: n.square().mean())])
def test_the_diffusion_loss_is_the_chosen_distance_to_the_true_noise(loss, expected):
    g = torch.Generator().manual_seed(4)
    latents = LatentBatch(torch.randn(3, 4, 6, 6, generator=g), torch.randn(3, 4, 6, 6, generator=g),
                          torch.randn(3, 2, 4, 6, 6, generator=g))  # fmt: skip
    alphas = torch.linspace(0.999, 0.01, 1000, dtype=torch.float64)
    denoiser = _Recording()
    output = diffusion_step(denoiser, latents, alphas, torch.Generator().manual_seed(9), 0.0, loss=loss)
    ab = alphas[denoiser.timesteps].float().view(-1, 1, 1, 1)
    noise = (denoiser.noisy - ab.sqrt() * latents.gt) / (1 - ab).sqrt()  # what the step drew, recovered
    assert output.loss.item() == pytest.approx(expected(noise).item(), rel=1e-5)
    assert output.diffusion == pytest.approx(output.loss.item())


def test_the_paper_s_l1_is_the_default_and_the_loss_names_match():
    from refface.train.config import DIFFUSION_LOSS_NAMES, LossConfig
    from refface.train.diffusion_step import DIFFUSION_LOSSES

    assert LossConfig().diffusion == "l1" and tuple(DIFFUSION_LOSSES) == DIFFUSION_LOSS_NAMES
    latents = LatentBatch(torch.randn(2, 4, 4, 4) * 3, torch.randn(2, 4, 4, 4), torch.randn(2, 1, 4, 4, 4))
    alphas = torch.linspace(0.999, 0.01, 1000, dtype=torch.float64)
    default = diffusion_step(_Recording(), latents, alphas, torch.Generator().manual_seed(1), 0.0)
    l1 = diffusion_step(_Recording(), latents, alphas, torch.Generator().manual_seed(1), 0.0, loss="l1")
    l2 = diffusion_step(_Recording(), latents, alphas, torch.Generator().manual_seed(1), 0.0, loss="l2")
    assert torch.equal(default.loss, l1.loss) and not torch.allclose(l1.loss, l2.loss)
