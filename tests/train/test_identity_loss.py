"""The timestep-scaled identity loss: weights, x0 estimate, value against a hand computation, gradient paths."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from refface import RefLDMPipeline, tiny_architecture
from refface.errors import RefFaceError
from refface.face.arcface import ArcFaceEmbedder, iresnet
from refface.models.cache_kv import ReferenceBatch, ReferenceKV
from refface.models.unet import denoise
from refface.models.vq import nearest_codes
from refface.train.identity_loss import (
    IDENTITY_WEIGHTINGS,
    IdentityLoss,
    identity_weight,
    official_alphas_cumprod,
    predict_x0,
)

BATCH = 2


@pytest.fixture(scope="module", autouse=True)
def flush_denormals():
    """The random ArcFace turns the random VQ's smooth images into denormal floats, which are ~5x slower on CPUs."""
    torch.set_flush_denormal(True)
    yield
    torch.set_flush_denormal(False)


@pytest.fixture(scope="module")
def alphas() -> torch.Tensor:
    return official_alphas_cumprod()


@pytest.fixture(scope="module")
def pipe() -> RefLDMPipeline:
    torch.manual_seed(7)
    return RefLDMPipeline.from_architecture(tiny_architecture())


@pytest.fixture(scope="module")
def arcface() -> ArcFaceEmbedder:
    torch.manual_seed(8)
    return ArcFaceEmbedder(iresnet((1, 1, 1, 1))).eval()


def make_loss(pipe: RefLDMPipeline, arcface: ArcFaceEmbedder, alphas: torch.Tensor, **kwargs) -> IdentityLoss:
    return IdentityLoss(pipe.vqvae, arcface, alphas, **kwargs)


def batch(seed: int, size: int = BATCH) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "noisy": torch.randn(size, 4, 8, 8, generator=generator),
        "eps": torch.randn(size, 4, 8, 8, generator=generator),
        "hq": torch.rand(size, 3, 16, 16, generator=generator) * 2 - 1,
        "ref": torch.rand(size, 3, 16, 16, generator=generator) * 2 - 1,
    }


def count_calls(module: torch.nn.Module, calls: list[int]) -> torch.utils.hooks.RemovableHandle:
    """Record the batch size of every forward call of `module`."""
    return module.register_forward_hook(lambda _module, args, _output: calls.append(args[0].shape[0]))


# ------------------------------------------------------------------------------------------------ weights
def test_scaled_weight_is_sqrt_alpha_bar(alphas):
    t = torch.tensor([0, 1, 99, 100, 500, 998, 999])
    weights = identity_weight(t, alphas, "scaled")
    assert weights.dtype == torch.float64
    assert torch.equal(weights, alphas[t].sqrt())
    assert weights[0] > 0.999 and 0 < weights[-1] < 0.03


def test_ablation_weightings(alphas):
    t = torch.tensor([0, 98, 99, 100, 101, 499, 500, 999])
    assert torch.equal(identity_weight(t, alphas, "unscaled"), torch.ones(8, dtype=torch.float64))
    assert identity_weight(t, alphas, "t<100").tolist() == [1, 1, 1, 0, 0, 0, 0, 0]
    assert identity_weight(t, alphas, "t<500").tolist() == [1, 1, 1, 1, 1, 1, 0, 0]
    assert torch.equal(identity_weight(t, alphas, "none"), torch.zeros(8, dtype=torch.float64))


def test_unknown_weighting_and_bad_timesteps_are_errors(pipe, arcface, alphas):
    with pytest.raises(RefFaceError, match=", ".join(IDENTITY_WEIGHTINGS)):
        identity_weight(torch.tensor([1]), alphas, "sqrt")
    with pytest.raises(RefFaceError, match="weighting"):
        make_loss(pipe, arcface, alphas, weighting="t<1000")
    with pytest.raises(RefFaceError, match="0, 999"):
        identity_weight(torch.tensor([5, 1000]), alphas, "scaled")
    with pytest.raises(RefFaceError, match="integer"):
        identity_weight(torch.tensor([5.0]), alphas, "scaled")


# ------------------------------------------------------------------------------------------------ x0 estimate
def test_predict_x0_inverts_the_forward_noising(alphas):
    generator = torch.Generator().manual_seed(1)
    x0 = torch.randn(4, 4, 8, 8, generator=generator, dtype=torch.float64)
    eps = torch.randn(4, 4, 8, 8, generator=generator, dtype=torch.float64)
    t = torch.tensor([0, 10, 500, 999])
    alpha_bar = alphas[t].view(-1, 1, 1, 1)
    noisy = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * eps
    estimate = predict_x0(noisy, eps, t, alphas)
    assert estimate.dtype == torch.float64
    torch.testing.assert_close(estimate, x0, rtol=0, atol=1e-12)
    # low-precision inputs are lifted to float32
    assert predict_x0(noisy.bfloat16(), eps.bfloat16(), t, alphas).dtype == torch.float32


# ------------------------------------------------------------------------------------------------ value
@pytest.mark.parametrize("quantize", [True, False])
def test_loss_matches_a_hand_computation(pipe, arcface, alphas, quantize):
    data = batch(2)
    t = torch.tensor([0, 999])
    out = make_loss(pipe, arcface, alphas, quantize=quantize)(data["noisy"], data["eps"], t, data["hq"])

    alpha_bar = alphas[t].float().view(-1, 1, 1, 1)
    x0 = (data["noisy"] - (1 - alpha_bar).sqrt() * data["eps"]) / alpha_bar.sqrt()
    with torch.no_grad():  # diffusers' own decode: its quantizer, or none
        images = pipe.vqvae.decode(x0, force_not_quantize=not quantize).sample
        cos = F.cosine_similarity(arcface(images), arcface(data["hq"]), dim=-1)
    weights = alphas[t].sqrt().float()
    expected = 0.1 * (weights * (1 - cos)).mean()

    torch.testing.assert_close(out.loss.detach(), expected, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(out.per_sample, 1 - cos, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.weights, weights)
    assert out.measured.all() and out.loss.ndim == 0


def test_a_face_is_at_zero_distance_from_itself(pipe, arcface, alphas):
    data = batch(3)
    t = torch.tensor([5, 900])
    loss = make_loss(pipe, arcface, alphas, weighting="unscaled")
    with torch.no_grad():
        itself = loss.decode(predict_x0(data["noisy"], data["eps"], t, alphas))
    same = loss(data["noisy"], data["eps"], t, itself)
    other = loss(data["noisy"], data["eps"], t, data["hq"])
    assert same.per_sample.abs().max() < 1e-5 and same.loss.abs() < 1e-6
    assert (other.per_sample > 1e-3).all() and other.loss > 100 * same.loss.abs()


def test_hard_example_mix(pipe, arcface, alphas):
    data = batch(4)
    t = torch.tensor([60, 700])
    plain = make_loss(pipe, arcface, alphas)
    hard = make_loss(pipe, arcface, alphas, hard_example_lambda=0.6)
    to_hq = plain(data["noisy"], data["eps"], t, data["hq"])
    to_ref = plain(data["noisy"], data["eps"], t, data["ref"])
    mixed = hard(data["noisy"], data["eps"], t, data["hq"], data["ref"])
    torch.testing.assert_close(mixed.loss, 0.4 * to_hq.loss + 0.6 * to_ref.loss, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(mixed.per_sample, 0.4 * to_hq.per_sample + 0.6 * to_ref.per_sample)
    with pytest.raises(RefFaceError, match="reference"):
        hard(data["noisy"], data["eps"], t, data["hq"])
    with pytest.raises(RefFaceError, match="hard_example_lambda"):
        plain(data["noisy"], data["eps"], t, data["hq"], data["ref"])


# ------------------------------------------------------------------------------------------------ gradients
def test_gradient_reaches_the_unet_and_not_the_frozen_models(pipe, arcface, alphas):
    torch.manual_seed(5)
    unet = RefLDMPipeline.from_architecture(tiny_architecture()).unet.train().requires_grad_(True)
    data = batch(5)
    t = torch.tensor([1, 600])
    lq_latent = torch.randn(BATCH, 4, 8, 8)
    no_references = ReferenceBatch(((BATCH, ReferenceKV({}, {}, num_references=0)),))
    eps = denoise(unet, torch.cat([data["noisy"], lq_latent], dim=1), t, no_references)
    eps.retain_grad()
    loss = make_loss(pipe, arcface, alphas)
    loss.train()
    out = loss(data["noisy"], eps, t, data["hq"])
    out.loss.backward()

    assert eps.grad is not None and eps.grad.abs().sum() > 0
    assert unet.conv_in.weight.grad is not None and unet.conv_in.weight.grad.abs().sum() > 0
    frozen = [*pipe.vqvae.parameters(), *arcface.parameters()]
    assert all(not p.requires_grad and p.grad is None for p in frozen)
    assert not pipe.vqvae.training and not arcface.training  # .train() on the loss leaves them in eval mode


def test_straight_through_quantization(pipe, arcface, alphas):
    data = batch(6)
    t = torch.tensor([0, 80])
    quantized, raw = (make_loss(pipe, arcface, alphas, quantize=q) for q in (True, False))
    x0 = predict_x0(data["noisy"], data["eps"], t, alphas).requires_grad_(True)
    vq = pipe.vqvae

    # forward: exactly the decode of the nearest codebook vectors; backward: their gradient, passed to the latent
    images = quantized.decode(x0)
    images.square().sum().backward()
    codes = nearest_codes(vq, x0.detach()).requires_grad_(True)
    reference = vq.decoder(vq.post_quant_conv(codes))
    reference.square().sum().backward()
    assert torch.equal(images, reference)
    torch.testing.assert_close(x0.grad, codes.grad)

    eps_q = data["eps"].clone().requires_grad_(True)
    eps_r = data["eps"].clone().requires_grad_(True)
    loss_q = quantized(data["noisy"], eps_q, t, data["hq"]).loss
    loss_r = raw(data["noisy"], eps_r, t, data["hq"]).loss
    assert not torch.allclose(loss_q, loss_r)
    (loss_q + loss_r).backward()
    assert eps_q.grad.abs().sum() > 0 and eps_r.grad.abs().sum() > 0
    assert not torch.allclose(eps_q.grad, eps_r.grad)


# ------------------------------------------------------------------------------------------------ skipping
@pytest.mark.parametrize(("weighting", "timesteps"), [("t<500", [500, 999]), ("none", [0, 1])])
def test_zero_weights_skip_the_decoder(pipe, arcface, alphas, weighting, timesteps):
    data = batch(7)
    eps = data["eps"].clone().requires_grad_(True)
    calls: list[int] = []
    handles = [count_calls(pipe.vqvae.decoder, calls), count_calls(arcface, calls)]
    try:
        out = make_loss(pipe, arcface, alphas, weighting=weighting)(
            data["noisy"], eps, torch.tensor(timesteps), data["hq"]
        )
    finally:
        for handle in handles:
            handle.remove()
    assert calls == []
    assert out.loss.item() == 0.0 and not out.measured.any()
    assert torch.equal(out.weights, torch.zeros(BATCH)) and torch.equal(out.per_sample, torch.zeros(BATCH))
    out.loss.backward()  # still part of the graph
    assert torch.equal(eps.grad, torch.zeros_like(eps))


def test_only_weighted_samples_are_decoded(pipe, arcface, alphas):
    data = batch(8)
    t = torch.tensor([600, 42])
    calls: list[int] = []
    handle = count_calls(pipe.vqvae.decoder, calls)
    try:
        partial = make_loss(pipe, arcface, alphas, weighting="t<500")(data["noisy"], data["eps"], t, data["hq"])
    finally:
        handle.remove()
    full = make_loss(pipe, arcface, alphas, weighting="unscaled")(data["noisy"], data["eps"], t, data["hq"])
    assert calls == [1]
    assert partial.measured.tolist() == [False, True]
    torch.testing.assert_close(partial.per_sample[1], full.per_sample[1])
    assert partial.per_sample[0] == 0
    torch.testing.assert_close(partial.loss.detach(), 0.1 * full.per_sample[1] / BATCH)


# ------------------------------------------------------------------------------------------------ dtypes, inputs
def test_bfloat16_models(pipe, arcface, alphas):
    data = batch(9)
    t = torch.tensor([0, 300])
    exact = make_loss(pipe, arcface, alphas)(data["noisy"], data["eps"], t, data["hq"])
    low = IdentityLoss(copy.deepcopy(pipe.vqvae).bfloat16(), copy.deepcopy(arcface).bfloat16(), alphas)
    low = low.to(torch.bfloat16)
    assert low.alphas_cumprod.dtype == torch.float64
    eps = data["eps"].clone().requires_grad_(True)
    approx = low(data["noisy"], eps, t, data["hq"])
    assert approx.loss.dtype == torch.float32 and approx.per_sample.dtype == torch.float32
    approx.loss.backward()
    assert eps.grad.dtype == torch.float32 and torch.isfinite(eps.grad).all() and eps.grad.abs().sum() > 0
    assert (approx.per_sample - exact.per_sample).abs().max() < 0.1


def test_mismatched_inputs_are_errors(pipe, arcface, alphas):
    data = batch(10)
    loss = make_loss(pipe, arcface, alphas)
    with pytest.raises(RefFaceError, match="timesteps"):
        loss(data["noisy"], data["eps"], torch.tensor([1, 2, 3]), data["hq"])
    with pytest.raises(RefFaceError, match="HQ images"):
        loss(data["noisy"], data["eps"], torch.tensor([1, 2]), data["hq"][:1])
    with pytest.raises(RefFaceError, match="must be equal"):
        loss(data["noisy"], data["eps"][:1], torch.tensor([1, 2]), data["hq"])
    with pytest.raises(RefFaceError, match="lambda"):
        make_loss(pipe, arcface, alphas, hard_example_lambda=1.5)
