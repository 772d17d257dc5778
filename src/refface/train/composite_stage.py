"""Training the Composite-Context method: L1 diffusion loss + 0.1 * the hard-example identity loss.

    L = |f(z_t, lq, c) - target|_1 + 0.1 * w(t) * [(1 - lambda) L_ID(x_HQ) + lambda L_ID(x_ref)],   lambda = 0.6

One reference per item (the first of the item's shuffled references); the LQ latent, the identity
token and the appearance tokens are each dropped independently with the condition-dropout
probability, so dual guidance at inference has every branch it combines. The encoders (ArcFace,
FaRL) and the autoencoder are frozen; W_H, W_G, the null token and the U-Net train.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler
from torch import nn
from transformers import CLIPVisionModel

from refface.models.composite_context import CompositeDenoiser, IdentityEncoder, encode_reference_features
from refface.models.kl import decode_latents, encode_latents
from refface.pipelines.base import COMPOSITE_OPTIONS, CONTEXT_PARTS
from refface.pipelines.color_fix import adain_color_fix
from refface.pipelines.composite import CompositeContextPipeline, DualGuidance, sample_composite
from refface.pipelines.noise import item_noise
from refface.train.diffusion_step import diffusion_loss
from refface.train.identity_loss import IdentityLoss
from refface.train.stage import LossTerm, SampleRows, SingleDenoiserStage


def epsilon_from_prediction(
    scheduler: DDIMScheduler, prediction: torch.Tensor, noisy: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """The noise a prediction implies: itself for eps models, sqrt(ab) v + sqrt(1 - ab) z_t for v models."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return prediction
    if kind != "v_prediction":
        raise ValueError(f"Unsupported prediction type {kind!r}.")
    alpha_bar = scheduler.alphas_cumprod.to(noisy.device)[timesteps].view(-1, 1, 1, 1).to(noisy.dtype)
    return alpha_bar.sqrt() * prediction + (1.0 - alpha_bar).sqrt() * noisy


class CompositeStage(SingleDenoiserStage):
    """Trains a `CompositeDenoiser` on batches {"gt", "lq", "refs"}."""

    def __init__(
        self,
        denoiser: CompositeDenoiser,
        vae: AutoencoderKL,
        scheduler: DDIMScheduler,
        identity_encoder: IdentityEncoder,
        facial_encoder: CLIPVisionModel,
        learning_rate: float,
        condition_dropout: float,
        identity_loss: IdentityLoss | None = None,
        guidance: DualGuidance | None = None,
        diffusion_loss: str = "l1",
        uses_references: bool = True,
    ) -> None:
        self.denoiser = denoiser.train().requires_grad_(True)
        self.vae = vae.eval().requires_grad_(False)
        self.identity_encoder = identity_encoder.eval().requires_grad_(False)
        self.facial_encoder = facial_encoder.eval().requires_grad_(False)
        self.scheduler = scheduler
        self.learning_rate = learning_rate
        self.condition_dropout = condition_dropout
        self.identity_loss = identity_loss
        self.guidance = guidance or DualGuidance.of(COMPOSITE_OPTIONS)
        self.diffusion_loss = diffusion_loss
        # the parts of the reference context trained with, those validation samples with (none without
        # references: an LQ-only model); the others are dropped at every step
        self.uses_references = uses_references
        parts = CONTEXT_PARTS[self.guidance.context] if uses_references else (False, False)
        self.uses_identity, self.uses_facial = parts

    def to(self, device: torch.device, dtype: torch.dtype) -> None:
        for module in (self.vae, self.identity_encoder, self.facial_encoder):
            module.to(device)
        if self.identity_loss is not None:
            self.identity_loss.to(device)

    def _keep(self, batch: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
        return (torch.rand(batch, generator=generator) >= self.condition_dropout).to(device)

    def losses(
        self, modules: dict[str, nn.Module], batch: dict, generator: torch.Generator, step: int
    ) -> Iterator[LossTerm]:
        gt, lq, reference = batch["gt"], batch["lq"], batch["refs"][:, 0]
        device, size = gt.device, gt.shape[0]
        gt_latents, lq_latents = encode_latents(self.vae, gt), encode_latents(self.vae, lq)
        features = encode_reference_features(self.identity_encoder, self.facial_encoder, reference)
        keep_lq, keep_identity, keep_facial = (self._keep(size, generator, device) for _ in range(3))
        keep_identity, keep_facial = keep_identity & self.uses_identity, keep_facial & self.uses_facial
        timesteps = torch.randint(0, self.scheduler.config.num_train_timesteps, (size,), generator=generator)
        noise = torch.randn(gt_latents.shape, generator=generator).to(gt_latents)
        timesteps = timesteps.to(device)
        noisy = self.scheduler.add_noise(gt_latents, noise, timesteps)
        prediction = modules["denoiser"](
            noisy,
            lq_latents,
            features,
            timesteps,
            keep_lq=keep_lq,
            keep_identity=keep_identity,
            keep_facial=keep_facial,
        )
        if self.scheduler.config.prediction_type == "v_prediction":
            target = self.scheduler.get_velocity(gt_latents, noise, timesteps)
        else:
            target = noise
        diffusion = diffusion_loss(self.diffusion_loss, prediction, target)
        loss, logs = diffusion, {"diffusion": float(diffusion.detach())}
        if self.identity_loss is not None:
            eps = epsilon_from_prediction(self.scheduler, prediction.float(), noisy.float(), timesteps)
            hard = self.identity_loss.hard_example_lambda is not None
            identity = self.identity_loss(noisy, eps, timesteps, gt, reference if hard else None)
            loss = loss + identity.loss
            logs["identity"] = float(identity.loss.detach())
        yield LossTerm("denoiser", loss, logs)

    @torch.no_grad()
    def sample(self, modules: dict[str, nn.Module], batch: dict, steps: int, seed: int) -> SampleRows:
        """Each item restored with all of its references (the training-free ensemble; none for a model trained
        without the reference context) and the colour fix."""
        denoiser = modules["denoiser"]
        lq_latents = encode_latents(self.vae, batch["lq"])
        outputs = []
        for index in range(lq_latents.shape[0]):
            features = None
            if self.uses_references:
                features = encode_reference_features(self.identity_encoder, self.facial_encoder, batch["refs"][index])
            noise = item_noise(tuple(lq_latents.shape[1:]), [seed + index])
            # eager steps: a CUDA graph's private memory pool would sit on top of the training run's memory
            latents = sample_composite(
                denoiser,
                self.scheduler,
                lq_latents[index : index + 1],
                features,
                noise,
                steps,
                self.guidance,
                cuda_graphs=False,
            )
            outputs.append(decode_latents(self.vae, latents).float())
        pixels = ((torch.cat(outputs) + 1.0) / 2.0).clamp(0.0, 1.0)
        fixed = adain_color_fix(pixels, (batch["lq"].float() + 1.0) / 2.0)
        return SampleRows(lq=batch["lq"], refs=batch["refs"], output=fixed * 2.0 - 1.0, gt=batch["gt"])

    def export(self, modules: dict[str, nn.Module], folder: Path) -> None:
        """A `CompositeContextPipeline` folder that `refface restore --method composite --model` loads."""
        denoiser = modules["denoiser"]
        CompositeContextPipeline(
            unet=denoiser.unet,
            vae=self.vae,
            scheduler=self.scheduler,
            context=denoiser.context,
            identity_encoder=self.identity_encoder,
            facial_encoder=self.facial_encoder,
            speedups=False,  # the modules are still being trained
        ).save_pretrained(folder)
