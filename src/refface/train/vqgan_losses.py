"""The VQGAN's losses (stage 1 of ReF-LDM), as taming-transformers' VQLPIPSWithDiscriminator defines them.

Generator (encoder, codebook, decoder) loss, for images x and reconstructions x_hat:

    nll   = mean |x - x_hat| + perceptual_weight * mean LPIPS(x, x_hat)
    g     = -mean D(x_hat)
    lam   = disc_weight * clamp(|grad_W nll| / (|grad_W g| + 1e-4), 0, 1e4), detached   (W: decoder's last conv)
    loss  = nll + lam * f(step) * g + codebook_weight * codebook_loss

Discriminator loss: f(step) * 0.5 * (mean relu(1 - D(x)) + mean relu(1 + D(x_hat))), where f(step) is
disc_factor from `disc_start` on and 0 before. D is pix2pix's PatchGAN (NLayerDiscriminator).

Where the defaults come from. ReF-LDM's public repository (ChiWeiHsiao/ref-ldm) ships only the LDM configs,
whose first stage has `lossconfig: torch.nn.Identity`; the loss settings of its VQGAN run are not published.
The paper states the run itself: 200k iterations, batch 32, 512x512 images, 8192 codes. The loss numbers are
therefore those of the public FFHQ VQGAN configs of the code base ReF-LDM builds on, latent-diffusion's
`models/first_stage_models/vq-f4/vq-f4-ffhq-256.yaml` and `vq-f4-64.yaml` (disc_start 0, disc_weight 0.75,
codebook_weight 1.0, base_learning_rate 4.5e-6), plus the constructor defaults of
taming-transformers' `taming/modules/losses/vqperceptual.py` for what those configs leave out
(perceptual_weight 1.0, disc_factor 1.0, disc_num_layers 3, disc_ndf 64, hinge loss, L1 pixel loss).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from refface.errors import RefFaceError, short_reason

PIXEL_LOSSES = ("l1", "l2")


@dataclass(frozen=True)
class VQGANLossSettings:
    """Weights and schedule of the VQGAN losses; defaults as described in the module docstring."""

    perceptual_weight: float = 1.0  # taming VQLPIPSWithDiscriminator default
    codebook_weight: float = 1.0  # latent-diffusion vq-f4-ffhq-256.yaml / vq-f4-64.yaml
    disc_weight: float = 0.75  # latent-diffusion vq-f4-ffhq-256.yaml / vq-f4-64.yaml
    disc_factor: float = 1.0  # taming VQLPIPSWithDiscriminator default
    disc_start: int = 0  # latent-diffusion vq-f4-ffhq-256.yaml / vq-f4-64.yaml
    pixel_loss: str = "l1"  # taming: |x - x_hat|
    disc_layers: int = 3  # taming NLayerDiscriminator default (n_layers)
    disc_channels: int = 64  # taming NLayerDiscriminator default (ndf)
    # taming (PyTorch Lightning, one training_step per optimiser) re-runs the autoencoder before the
    # discriminator step, so D sees reconstructions of the just-updated generator; False reuses the
    # generator step's reconstructions (one autoencoder forward less per iteration).
    refresh_fake: bool = True

    def __post_init__(self) -> None:
        for name in ("perceptual_weight", "codebook_weight", "disc_weight", "disc_factor"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or not value >= 0:
                raise RefFaceError(f"The VQGAN loss setting {name} must be a non-negative number, got {value!r}.")
        if not isinstance(self.disc_start, int) or isinstance(self.disc_start, bool) or self.disc_start < 0:
            raise RefFaceError(
                f"The VQGAN loss setting disc_start must be a step number >= 0, got {self.disc_start!r}."
            )
        if self.pixel_loss not in PIXEL_LOSSES:
            raise RefFaceError(
                f"The VQGAN pixel loss must be one of {', '.join(PIXEL_LOSSES)}, got {self.pixel_loss!r}."
            )
        for name in ("disc_layers", "disc_channels"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise RefFaceError(f"The VQGAN loss setting {name} must be a positive integer, got {value!r}.")


def _init_weights(module: nn.Module) -> None:
    """taming's weights_init: convolution weights ~ N(0, 0.02), BatchNorm scales ~ N(1, 0.02) and shifts 0."""
    if isinstance(module, nn.Conv2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class PatchDiscriminator(nn.Module):
    """pix2pix's PatchGAN (taming's NLayerDiscriminator with BatchNorm): a map of real/fake logits per patch.

    Layer names follow taming (`main.<index>`), so the `loss.discriminator.*` weights of a taming or
    latent-diffusion VQGAN checkpoint load after removing that prefix.
    """

    def __init__(self, in_channels: int = 3, channels: int = 64, layers: int = 3) -> None:
        super().__init__()
        if layers < 1 or channels < 1:
            raise RefFaceError(f"A PatchGAN needs at least one layer and one channel, got {layers} and {channels}.")
        self.layers = layers
        modules: list[nn.Module] = [
            nn.Conv2d(in_channels, channels, kernel_size=4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
        ]
        width = 1
        for level in range(1, layers + 1):
            previous, width = width, min(2**level, 8)
            stride = 2 if level < layers else 1  # the last hidden layer keeps the resolution
            modules += [
                nn.Conv2d(channels * previous, channels * width, kernel_size=4, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(channels * width),
                nn.LeakyReLU(0.2),
            ]
        modules.append(nn.Conv2d(channels * width, 1, kernel_size=4, stride=1, padding=1))
        self.main = nn.Sequential(*modules)
        self.apply(_init_weights)

    @property
    def min_size(self) -> int:
        """Smallest input side with a non-empty logit map: floor(S / 2**layers) - 2 >= 1."""
        return 3 * 2**self.layers

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """[B, C, S, S] -> logits [B, 1, S / 2**layers - 2, S / 2**layers - 2] (for S divisible by 2**layers)."""
        if min(images.shape[-2:]) < self.min_size:
            raise RefFaceError(
                f"A {self.layers}-layer PatchGAN needs images of at least {self.min_size} pixels a side, "
                f"got {tuple(images.shape[-2:])}; use fewer discriminator layers for small images."
            )
        return self.main(images)


def disc_factor(settings: VQGANLossSettings, step: int) -> float:
    """The adversarial terms' factor: settings.disc_factor from `disc_start` on, 0 before (taming's adopt_weight)."""
    return settings.disc_factor if step >= settings.disc_start else 0.0


def hinge_discriminator_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Hinge loss 0.5 * (mean relu(1 - real) + mean relu(1 + fake)): zero once D separates by a margin of 1."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def adaptive_weight(
    nll_loss: torch.Tensor, gan_loss: torch.Tensor, last_layer: torch.Tensor, disc_weight: float
) -> torch.Tensor:
    """disc_weight * |grad nll| / (|grad gan| + 1e-4) at the decoder's last layer, clamped to [0, 1e4], detached.

    Balances the adversarial gradient against the reconstruction gradient where they meet, so neither
    dominates whatever the scale of the discriminator's logits (Esser et al., taming-transformers).
    """
    try:
        (nll_grad,) = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)
        (gan_grad,) = torch.autograd.grad(gan_loss, last_layer, retain_graph=True)
    except RuntimeError as error:
        first = short_reason(error)
        raise RefFaceError(
            f"The adaptive GAN weight needs both losses to depend on the decoder's last layer with gradients ({first})."
        ) from None
    ratio = torch.linalg.vector_norm(nll_grad) / (torch.linalg.vector_norm(gan_grad) + 1e-4)
    return ratio.clamp(0.0, 1e4).detach() * disc_weight


def pixel_loss(reconstruction: torch.Tensor, target: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    """Mean absolute (l1) or squared (l2) pixel difference."""
    if kind not in PIXEL_LOSSES:
        raise RefFaceError(f"The VQGAN pixel loss must be one of {', '.join(PIXEL_LOSSES)}, got {kind!r}.")
    difference = reconstruction.float() - target.float()
    return difference.abs().mean() if kind == "l1" else difference.square().mean()


def _logits_without_parameter_grads(discriminator: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """D(images) with gradients to `images` only.

    The generator step must not leave gradients on the discriminator (the trainer may accumulate them into
    the next discriminator step), which taming gets from Lightning's per-optimiser `requires_grad` toggling.
    Running the unwrapped module with detached parameters does the same without touching any flag, and
    without a DDP forward whose reducer would wait for gradients that never come.
    """
    detached = {name: parameter.detach() for name, parameter in discriminator.named_parameters()}
    return functional_call(discriminator, detached, (images,))


def generator_loss(
    reconstruction: torch.Tensor,
    target: torch.Tensor,
    codebook_loss: torch.Tensor,
    discriminator: nn.Module,
    last_layer: torch.Tensor,
    lpips: nn.Module | None,
    settings: VQGANLossSettings,
    step: int,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The autoencoder's loss and its parts (as floats).

    `discriminator` is the unwrapped module (no DDP); its parameters receive no gradient. Without `lpips`
    (or with perceptual_weight 0) the perceptual term is left out. When the adversarial factor is 0
    (before disc_start) the adversarial term and the adaptive weight are not computed at all; taming
    computes them and multiplies by 0, which gives the same loss and gradients.
    """
    pixel = pixel_loss(reconstruction, target, settings.pixel_loss)
    if lpips is not None and settings.perceptual_weight > 0:
        perceptual = lpips(target, reconstruction).float().mean()
    else:
        perceptual = pixel.new_zeros(())
    nll = pixel + settings.perceptual_weight * perceptual
    codebook = codebook_loss.float().mean()
    factor = disc_factor(settings, step)
    if factor > 0 and settings.disc_weight > 0:
        gan = -_logits_without_parameter_grads(discriminator, reconstruction).float().mean()
        weight = adaptive_weight(nll, gan, last_layer, settings.disc_weight)
    else:
        gan, weight = pixel.new_zeros(()), pixel.new_zeros(())
    loss = nll + weight * factor * gan + settings.codebook_weight * codebook
    logs = {
        "total": loss.item(),
        "pixel": pixel.item(),
        "perceptual": perceptual.item(),
        "nll": nll.item(),
        "codebook": codebook.item(),
        "generator_adv": gan.item(),
        "adaptive_weight": weight.item(),
        "disc_factor": float(factor),
    }
    return loss, logs


def discriminator_loss(
    discriminator: nn.Module,
    real: torch.Tensor,
    fake: torch.Tensor,
    settings: VQGANLossSettings,
    step: int,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The discriminator's hinge loss times the adversarial factor, and its logs.

    D is called through its forward (it may be DDP-wrapped), once on the real and once on the fake images
    as in taming (BatchNorm statistics per call). Before disc_start the factor is 0: the loss is still a
    graph over all of D's parameters, with zero gradients, so an optimiser step leaves D unchanged.
    """
    logits_real = discriminator(real.detach())
    logits_fake = discriminator(fake.detach())
    factor = disc_factor(settings, step)
    loss = factor * hinge_discriminator_loss(logits_real.float(), logits_fake.float())
    logs = {
        "disc_loss": loss.item(),
        "logits_real": logits_real.detach().float().mean().item(),
        "logits_fake": logits_fake.detach().float().mean().item(),
    }
    return loss, logs
