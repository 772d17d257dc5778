"""Stage 1 of ReF-LDM: the VQGAN (512x512 images <-> 64x64x8 latents, 8192 codes), on diffusers' VQModel.

The paper trains it for 200k iterations with batch 32; the losses are taming-transformers'
VQLPIPSWithDiscriminator (see `refface.train.vqgan_losses` for the formulas and where every default comes
from). Each iteration has two optimiser steps, the autoencoder's and then the PatchGAN discriminator's,
both Adam with betas (0.5, 0.9) and the same learning rate, as latent-diffusion's VQModel configures them
(`ldm/models/autoencoder.py`, configure_optimizers).

Choices documented here:

* Before `disc_start` the discriminator term is still yielded, as 0 x the hinge loss, so both optimisers
  and their schedulers step in lock-step from the first iteration (taming does the same); with Adam
  without weight decay the zero gradients leave D unchanged.
* Without an LPIPS module the perceptual term is left out (the loss is L1 + codebook + adversarial); that
  is meant for tests and smoke runs, the paper's recipe needs `refface.models.lpips.default_lpips()`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
from diffusers import VQModel
from torch import nn

from refface.errors import RefFaceError
from refface.train.stage import LossTerm, SampleRows
from refface.train.vqgan_losses import PatchDiscriminator, VQGANLossSettings, discriminator_loss, generator_loss

# latent-diffusion's FFHQ VQGAN configs (models/first_stage_models/vq-f4/vq-f4-ffhq-256.yaml, vq-f4-64.yaml).
BASE_LEARNING_RATE = 4.5e-6
PAPER_BATCH_SIZE = 32  # ReF-LDM paper: VQGAN trained 200k iterations with batch size 32


def official_learning_rate(batch_size: int = PAPER_BATCH_SIZE, accumulation: int = 1) -> float:
    """latent-diffusion's main.py `scale_lr` rule: base_lr x batch size (over all GPUs) x accumulation steps.

    For the paper's batch of 32 this is 1.44e-4; the rule is the code base's default, ReF-LDM does not
    publish the VQGAN's own learning rate.
    """
    if batch_size < 1 or accumulation < 1:
        raise RefFaceError(f"Batch size and accumulation must be positive, got {batch_size} and {accumulation}.")
    return BASE_LEARNING_RATE * batch_size * accumulation


def _unwrap(module: nn.Module) -> nn.Module:
    """The module inside a DDP (or similar) wrapper, for attribute access that must bypass `forward`."""
    return getattr(module, "module", module)


class VQGANStage:
    """Trains a VQModel and a PatchGAN discriminator with taming's VQGAN losses."""

    def __init__(
        self,
        vq: VQModel,
        settings: VQGANLossSettings,
        lpips: nn.Module | None,
        learning_rate: float,
        discriminator: nn.Module | None = None,
    ) -> None:
        if not learning_rate > 0:
            raise RefFaceError(f"The VQGAN learning rate must be positive, got {learning_rate!r}.")
        if vq.config.in_channels != vq.config.out_channels:
            raise RefFaceError("The VQGAN must reconstruct as many channels as it reads to be trained on its input.")
        self.vq = vq
        self.settings = settings
        self.lpips = lpips.eval().requires_grad_(False) if lpips is not None else None
        self.learning_rate = float(learning_rate)
        if discriminator is None:
            discriminator = PatchDiscriminator(vq.config.out_channels, settings.disc_channels, settings.disc_layers)
        self.discriminator = discriminator
        self.vq.train().requires_grad_(True)
        self.discriminator.train().requires_grad_(True)

    def trainable(self) -> dict[str, nn.Module]:
        """The autoencoder (encoder, codebook, decoder) and the discriminator, one optimiser each."""
        return {"vqgan": self.vq, "discriminator": self.discriminator}

    def learning_rates(self) -> dict[str, float]:
        """The same base learning rate for both optimisers (latent-diffusion's VQModel)."""
        return {"vqgan": self.learning_rate, "discriminator": self.learning_rate}

    def ema_target(self) -> str | None:
        """No EMA: the official VQGAN is trained and released without one."""
        return None

    def to(self, device: torch.device, dtype: torch.dtype) -> None:
        """Move the frozen LPIPS network (the only helper) to the training device."""
        if self.lpips is not None:
            self.lpips.to(device=device, dtype=dtype)

    def losses(
        self, modules: dict[str, nn.Module], batch: dict, generator: torch.Generator, step: int
    ) -> Iterator[LossTerm]:
        """The autoencoder's loss, then (after the trainer has applied it) the discriminator's.

        `generator` is unused: the VQGAN step has no randomness.
        """
        vq, disc = modules["vqgan"], modules["discriminator"]
        gt = batch["gt"]
        if gt.ndim != 4 or gt.shape[1] != _unwrap(vq).config.in_channels:
            raise RefFaceError(f"The VQGAN stage needs batch['gt'] as [B, 3, S, S] images, got {tuple(gt.shape)}.")
        output = vq(gt)
        last_layer = _unwrap(vq).decoder.conv_out.weight
        loss, logs = generator_loss(
            output.sample, gt, output.commit_loss, _unwrap(disc), last_layer, self.lpips, self.settings, step
        )
        yield LossTerm("vqgan", loss, logs)

        if self.settings.refresh_fake:
            with torch.no_grad():
                fake = vq(gt).sample
        else:
            fake = output.sample.detach()
        del output, loss
        disc_loss, disc_logs = discriminator_loss(disc, gt, fake, self.settings, step)
        yield LossTerm("discriminator", disc_loss, disc_logs)

    @torch.no_grad()
    def sample(self, modules: dict[str, nn.Module], batch: dict, steps: int, seed: int) -> SampleRows:
        """Reconstructions of the ground truth (`steps` and `seed` are unused: decoding is deterministic)."""
        gt = batch["gt"]
        reconstruction = modules["vqgan"](gt).sample.clamp(-1.0, 1.0)
        refs = gt.new_zeros(gt.shape[0], 0, *gt.shape[1:])
        return SampleRows(lq=gt, refs=refs, output=reconstruction, gt=gt)

    def export(self, modules: dict[str, nn.Module], folder: Path) -> None:
        """The trained autoencoder as a diffusers VQModel folder (`vqvae/`), which later stages load as their VQGAN."""
        modules["vqgan"].save_pretrained(folder / "vqvae")
