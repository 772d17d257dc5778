"""VQGAN losses and the VQGAN training stage: hand-computed values, gradient paths and a short optimisation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from refface.errors import RefFaceError
from refface.models.config import tiny_architecture
from refface.models.lpips import random_lpips
from refface.models.vq import build_vqmodel
from refface.train.stage import LossTerm
from refface.train.vqgan_losses import (
    PatchDiscriminator,
    VQGANLossSettings,
    adaptive_weight,
    disc_factor,
    discriminator_loss,
    generator_loss,
    hinge_discriminator_loss,
    pixel_loss,
)
from refface.train.vqgan_stage import VQGANStage, official_learning_rate

SIZE = 16  # the tiny VQ architecture's images


class Wrapped(nn.Module):
    """Stands in for DistributedDataParallel: forwards calls and exposes the module as `.module`."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


@pytest.fixture(scope="module")
def lpips():
    return random_lpips(0)


def images(batch: int, seed: int, size: int = SIZE) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def make_stage(lpips=None, seed: int = 0, **settings) -> VQGANStage:
    torch.manual_seed(seed)
    vq = build_vqmodel(tiny_architecture().vq)
    return VQGANStage(vq, VQGANLossSettings(disc_layers=2, **settings), lpips, learning_rate=1e-3)


# ----------------------------------------------------------------------------- settings and small functions


def test_defaults_are_the_public_ffhq_vqgan_settings():
    settings = VQGANLossSettings()
    assert (settings.perceptual_weight, settings.codebook_weight, settings.disc_factor) == (1.0, 1.0, 1.0)
    assert (settings.disc_weight, settings.disc_start) == (0.75, 0)
    assert (settings.disc_layers, settings.disc_channels, settings.pixel_loss) == (3, 64, "l1")
    assert official_learning_rate(32) == pytest.approx(1.44e-4)


@pytest.mark.parametrize(
    "bad", [{"disc_weight": -1.0}, {"disc_start": -5}, {"pixel_loss": "huber"}, {"disc_layers": 0}]
)
def test_invalid_settings_are_refused(bad):
    with pytest.raises(RefFaceError):
        VQGANLossSettings(**bad)


def test_disc_factor_is_zero_before_disc_start():
    settings = VQGANLossSettings(disc_start=100, disc_factor=0.5)
    assert [disc_factor(settings, step) for step in (0, 99, 100, 5000)] == [0.0, 0.0, 0.5, 0.5]
    assert disc_factor(VQGANLossSettings(), 0) == 1.0  # disc_start 0: adversarial from the first step


def test_hinge_loss_on_hand_computed_logits():
    real = torch.tensor([2.0, 0.5, -1.0, 1.0])
    fake = torch.tensor([-2.0, 0.0, 0.5, -1.0])
    # relu(1 - real) = [0, 0.5, 2, 0] -> mean 0.625; relu(1 + fake) = [0, 1, 1.5, 0] -> mean 0.625
    assert hinge_discriminator_loss(real, fake).item() == pytest.approx(0.5 * (0.625 + 0.625))
    assert hinge_discriminator_loss(torch.full((3,), 1.5), torch.full((3,), -1.5)).item() == 0.0


def test_pixel_losses():
    a, b = torch.zeros(1, 3, 2, 2), torch.full((1, 3, 2, 2), 0.5)
    assert pixel_loss(a, b, "l1").item() == pytest.approx(0.5)
    assert pixel_loss(a, b, "l2").item() == pytest.approx(0.25)


def test_adaptive_weight_is_the_ratio_of_gradient_norms():
    last = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), requires_grad=True)
    a = torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 2.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])  # |a| = 3
    b = torch.full((4, 3), 0.5)  # |b| = sqrt(12 * 0.25) = sqrt(3)
    nll = (last * a).sum()
    gan = (last * b).sum()
    weight = adaptive_weight(nll, gan, last, disc_weight=0.75)
    assert weight.item() == pytest.approx(0.75 * 3.0 / (3.0**0.5 + 1e-4), rel=1e-6)
    assert weight.grad_fn is None and not weight.requires_grad
    nll.backward()  # the graphs were kept for the real backward pass
    torch.testing.assert_close(last.grad, a)


def test_adaptive_weight_is_clamped():
    last = torch.ones(3, requires_grad=True)
    nll = (last * 10.0).sum()
    gan = (last * 0.0).sum()
    assert adaptive_weight(nll, gan, last, disc_weight=1.0).item() == pytest.approx(1e4)


def test_adaptive_weight_refuses_a_loss_that_does_not_reach_the_layer():
    last = torch.ones(3, requires_grad=True)
    with pytest.raises(RefFaceError, match="last layer"):
        adaptive_weight((last * 2).sum(), torch.ones((), requires_grad=True) * 3, last, 1.0)


# ----------------------------------------------------------------------------- discriminator


@pytest.mark.parametrize(("size", "layers"), [(16, 1), (16, 2), (32, 2), (32, 3), (64, 3), (48, 3)])
def test_discriminator_logit_map_shape(size, layers):
    disc = PatchDiscriminator(layers=layers)
    logits = disc(images(2, 1, size))
    side = size // 2**layers - 2
    assert logits.shape == (2, 1, side, side)


def test_discriminator_refuses_images_too_small_for_its_depth():
    with pytest.raises(RefFaceError, match="at least 24 pixels"):
        PatchDiscriminator(layers=3)(images(2, 1, 16))


def test_discriminator_layout_and_initialisation_follow_taming():
    torch.manual_seed(0)
    disc = PatchDiscriminator()
    convs = [m for m in disc.main if isinstance(m, nn.Conv2d)]
    norms = [m for m in disc.main if isinstance(m, nn.BatchNorm2d)]
    assert [c.out_channels for c in convs] == [64, 128, 256, 512, 1]
    assert [c.stride[0] for c in convs] == [2, 2, 2, 1, 1]
    assert [c.bias is not None for c in convs] == [True, False, False, False, True]
    assert all(isinstance(m, nn.LeakyReLU) and m.negative_slope == 0.2 for m in disc.main if m not in convs + norms)
    assert set(disc.state_dict()) >= {"main.0.weight", "main.2.weight", "main.3.running_mean", "main.11.bias"}
    weights = torch.cat([c.weight.flatten() for c in convs])
    assert weights.mean().abs() < 1e-3 and weights.std().item() == pytest.approx(0.02, rel=0.05)
    scales = torch.cat([n.weight for n in norms])
    assert scales.mean().item() == pytest.approx(1.0, abs=0.01) and scales.std().item() == pytest.approx(0.02, rel=0.2)
    assert all(torch.all(n.bias == 0) for n in norms)


# ----------------------------------------------------------------------------- loss functions


def _vq_outputs(stage: VQGANStage, gt: torch.Tensor):
    output = stage.vq(gt)
    return output.sample, output.commit_loss


@pytest.mark.parametrize("batch", [2, 3])
def test_generator_loss_before_disc_start_is_reconstruction_plus_codebook(lpips, batch):
    stage = make_stage(lpips, disc_start=10, codebook_weight=0.5, perceptual_weight=2.0)
    gt = images(batch, 2)
    reconstruction, codebook = _vq_outputs(stage, gt)
    loss, logs = generator_loss(
        reconstruction, gt, codebook, stage.discriminator, stage.vq.decoder.conv_out.weight, lpips, stage.settings, 9
    )
    expected = (reconstruction - gt).abs().mean() + 2.0 * lpips(gt, reconstruction).mean() + 0.5 * codebook
    torch.testing.assert_close(loss, expected)
    assert logs["disc_factor"] == 0.0 and logs["adaptive_weight"] == 0.0 and logs["generator_adv"] == 0.0
    assert logs["total"] == pytest.approx(loss.item())


def test_generator_loss_after_disc_start_adds_the_weighted_adversarial_term(lpips):
    stage = make_stage(lpips, disc_start=10, disc_factor=0.5)
    gt = images(2, 3)
    reconstruction, codebook = _vq_outputs(stage, gt)
    last = stage.vq.decoder.conv_out.weight
    loss, logs = generator_loss(reconstruction, gt, codebook, stage.discriminator, last, lpips, stage.settings, 10)
    nll = (reconstruction - gt).abs().mean() + lpips(gt, reconstruction).mean()
    assert logs["nll"] == pytest.approx(nll.item(), rel=1e-5)
    weight, gan = logs["adaptive_weight"], logs["generator_adv"]
    assert weight > 0 and logs["disc_factor"] == 0.5
    assert loss.item() == pytest.approx(nll.item() + weight * 0.5 * gan + codebook.item(), rel=1e-5)


def test_the_generator_loss_leaves_no_gradient_on_the_discriminator(lpips):
    stage = make_stage(lpips)
    gt = images(2, 4)
    reconstruction, codebook = _vq_outputs(stage, gt)
    loss, _ = generator_loss(
        reconstruction, gt, codebook, stage.discriminator, stage.vq.decoder.conv_out.weight, lpips, stage.settings, 0
    )
    loss.backward()
    assert all(p.grad is None for p in stage.discriminator.parameters())
    assert stage.vq.decoder.conv_out.weight.grad.abs().sum() > 0


def test_discriminator_loss_before_disc_start_is_zero_with_zero_gradients():
    torch.manual_seed(0)
    disc = PatchDiscriminator(layers=2)
    settings = VQGANLossSettings(disc_start=5, disc_layers=2)
    loss, logs = discriminator_loss(disc, images(2, 1), images(2, 2), settings, step=4)
    assert loss.item() == 0.0 and logs["disc_loss"] == 0.0
    loss.backward()
    assert all(p.grad is not None and torch.all(p.grad == 0) for p in disc.parameters())


def test_discriminator_loss_matches_the_hinge_of_its_logits():
    torch.manual_seed(0)
    disc = PatchDiscriminator(layers=2)
    settings = VQGANLossSettings(disc_layers=2, disc_factor=0.5)
    real, fake = images(3, 1), images(3, 2)
    loss, logs = discriminator_loss(disc, real, fake, settings, step=0)
    expected = 0.5 * hinge_discriminator_loss(disc(real), disc(fake))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert set(logs) == {"disc_loss", "logits_real", "logits_fake"}


# ----------------------------------------------------------------------------- the stage


def test_stage_protocol_answers():
    stage = make_stage()
    assert set(stage.trainable()) == {"vqgan", "discriminator"}
    assert stage.trainable()["vqgan"] is stage.vq
    assert stage.learning_rates() == {"vqgan": 1e-3, "discriminator": 1e-3}
    assert stage.ema_target() is None
    assert all(p.requires_grad for m in stage.trainable().values() for p in m.parameters())
    assert all(m.training for m in stage.trainable().values())


def test_stage_moves_lpips():
    stage = make_stage(random_lpips(1))
    stage.to(torch.device("cpu"), torch.float64)
    assert stage.lpips.features[0].weight.dtype == torch.float64


@pytest.mark.parametrize("wrap", [False, True])
@pytest.mark.parametrize("batch", [2, 3])
def test_gradients_reach_the_decoder_first_and_the_discriminator_second(lpips, wrap, batch):
    stage = make_stage(lpips)
    modules = {name: Wrapped(m) if wrap else m for name, m in stage.trainable().items()}
    terms = stage.losses(modules, {"gt": images(batch, 5)}, torch.Generator().manual_seed(0), step=0)

    first = next(terms)
    assert isinstance(first, LossTerm) and first.optimizer == "vqgan"
    assert torch.isfinite(first.loss) and all(isinstance(v, float) for v in first.logs.values())
    assert first.logs["adaptive_weight"] > 0 and first.logs["perceptual"] > 0
    first.loss.backward()
    assert stage.vq.decoder.conv_out.weight.grad.abs().sum() > 0
    assert stage.vq.encoder.conv_in.weight.grad.abs().sum() > 0  # through the straight-through quantizer
    assert stage.vq.quantize.embedding.weight.grad.abs().sum() > 0  # the codebook loss
    assert all(p.grad is None for p in stage.discriminator.parameters())
    stage.vq.zero_grad(set_to_none=True)

    second = next(terms)
    assert second.optimizer == "discriminator" and torch.isfinite(second.loss)
    second.loss.backward()
    assert all(p.grad is not None for p in stage.discriminator.parameters())
    assert sum(p.grad.abs().sum() for p in stage.discriminator.parameters()) > 0
    assert all(p.grad is None for p in stage.vq.parameters())
    assert next(terms, None) is None


def test_before_disc_start_the_discriminator_term_is_still_yielded_with_zero_weight():
    stage = make_stage(disc_start=1000)
    terms = list(stage.losses(stage.trainable(), {"gt": images(2, 6)}, torch.Generator(), step=3))
    assert [t.optimizer for t in terms] == ["vqgan", "discriminator"]
    assert terms[0].logs["disc_factor"] == 0.0 and terms[0].logs["perceptual"] == 0.0  # no LPIPS given
    assert terms[1].loss.item() == 0.0 and terms[1].loss.requires_grad


def test_the_refreshed_fake_comes_from_the_updated_generator():
    """After the trainer steps the autoencoder, the discriminator sees its new reconstructions (taming's order)."""
    for refresh in (True, False):
        stage = make_stage(disc_start=1000, refresh_fake=refresh)
        gt = images(2, 7)
        seen = []
        original = stage.discriminator.forward
        stage.discriminator.forward = lambda x, seen=seen, original=original: seen.append(x) or original(x)
        terms = stage.losses(stage.trainable(), {"gt": gt}, torch.Generator(), step=0)
        next(terms)
        with torch.no_grad():
            before = stage.vq(gt).sample
            stage.vq.decoder.conv_out.bias.add_(0.25)  # stands in for the optimiser step
            after = stage.vq(gt).sample
        next(terms)
        torch.testing.assert_close(seen[1], after if refresh else before)


def test_a_few_adam_steps_reduce_the_reconstruction_loss(lpips):
    stage = make_stage(lpips)
    modules = stage.trainable()
    optimizers = {
        name: torch.optim.Adam(module.parameters(), lr=stage.learning_rates()[name], betas=(0.5, 0.9))
        for name, module in modules.items()
    }
    batch = {"gt": images(2, 8)}
    history = []
    for step in range(8):
        for term in stage.losses(modules, batch, torch.Generator(), step):
            optimizers[term.optimizer].zero_grad(set_to_none=True)
            term.loss.backward()
            optimizers[term.optimizer].step()
            if term.optimizer == "vqgan":
                history.append(term.logs["pixel"])
    assert all(torch.isfinite(torch.tensor(history)))
    assert history[-1] < 0.9 * history[0]


def test_sample_rows_are_reconstructions_of_the_ground_truth():
    stage = make_stage()
    gt = images(3, 9)
    rows = stage.sample(stage.trainable(), {"gt": gt}, steps=5, seed=0)
    assert rows.output.shape == rows.gt.shape == rows.lq.shape == gt.shape
    assert rows.refs.shape == (3, 0, 3, SIZE, SIZE)
    assert torch.equal(rows.lq, gt) and rows.output.abs().max() <= 1
    torch.testing.assert_close(rows.output, stage.vq(gt).sample.clamp(-1, 1))


def test_stage_refuses_a_wrong_batch():
    stage = make_stage()
    with pytest.raises(RefFaceError, match="batch"):
        next(stage.losses(stage.trainable(), {"gt": torch.zeros(2, 1, SIZE, SIZE)}, torch.Generator(), 0))
