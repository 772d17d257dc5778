"""One training step of the (Ref-)LDM: encode, noise, CacheKV reference pass and main pass, losses.

The reference pass runs in the same autograd graph as the main pass, so the U-Net learns both to
produce useful reference keys/values and to use them. All randomness of a step (timesteps, noise,
condition dropout) comes from a generator the caller seeds, which makes a resumed run repeat an
uninterrupted one exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import VQModel

from refface.models.reference_integration import ReferenceDenoiser
from refface.models.vq import encode_unquantized

# The diffusion loss between predicted and true noise: L1, as both papers train (ReF-LDM Sec. 3, the
# Composite-Context stage), or L2 (MSE), the usual LDM choice, kept for comparison (`loss.diffusion`).
DIFFUSION_LOSSES = {"l1": F.l1_loss, "l2": F.mse_loss}


def diffusion_loss(name: str, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The `name` loss ("l1" or "l2") between prediction and target, in fp32 whatever the training precision."""
    return DIFFUSION_LOSSES[name](prediction.float(), target.float())


@dataclass
class StepOutput:
    """The loss to back-propagate and its parts, detached, for logging."""

    loss: torch.Tensor
    diffusion: float
    identity: float
    timesteps: torch.Tensor


@dataclass
class LatentBatch:
    """VQ latents of a batch: gt and lq [B, C, h, w], refs [B, N, C, h, w] (N may be 0)."""

    gt: torch.Tensor
    lq: torch.Tensor
    refs: torch.Tensor


@torch.no_grad()
def encode_references_wide(vq: VQModel, refs: torch.Tensor) -> torch.Tensor:
    """References [B, N >= 1, 3, S, S] -> latents [B, N, C, h, w], encoded as one wide image per item (official)."""
    wide = torch.cat(refs.unbind(1), dim=-1)  # [B, 3, S, N*S]
    latent = encode_unquantized(vq, wide)
    return torch.stack(latent.split(latent.shape[-1] // refs.shape[1], dim=-1), dim=1)


@torch.no_grad()
def encode_batch(vq: VQModel, gt: torch.Tensor, lq: torch.Tensor, refs: torch.Tensor | None) -> LatentBatch:
    """Unquantized encoder latents of GT, LQ and references (N may be 0 or `refs` None for LQ-only training)."""
    gt_latent = encode_unquantized(vq, gt)
    lq_latent = encode_unquantized(vq, lq)
    if refs is None or refs.shape[1] == 0:
        return LatentBatch(gt_latent, lq_latent, gt_latent.new_zeros(gt_latent.shape[0], 0, *gt_latent.shape[1:]))
    return LatentBatch(gt_latent, lq_latent, encode_references_wide(vq, refs))


def drop_conditions(latents: LatentBatch, probability: float, generator: torch.Generator) -> LatentBatch:
    """Zero the LQ latent and the reference latents of each item independently with `probability`.

    Zero tensors are the null condition used at inference (zero references through the reference
    pass), which is what classifier-free guidance needs the model to have seen.
    """
    batch = latents.gt.shape[0]
    keep_lq = (torch.rand(batch, generator=generator) >= probability).to(latents.lq)
    keep_refs = (torch.rand(batch, generator=generator) >= probability).to(latents.refs)
    return LatentBatch(
        latents.gt,
        latents.lq * keep_lq.view(-1, 1, 1, 1),
        latents.refs * keep_refs.view(-1, 1, 1, 1, 1),
    )


def diffusion_step(
    denoiser: ReferenceDenoiser,
    latents: LatentBatch,
    alphas_cumprod: torch.Tensor,
    generator: torch.Generator,
    condition_dropout: float = 0.1,
    identity_loss=None,
    hq_images: torch.Tensor | None = None,
    loss: str = "l1",
) -> StepOutput:
    """The eps-prediction loss (`loss`: "l1" or "l2") plus the identity loss, for one batch.

    `denoiser` may be DDP-wrapped: it is only called, so gradients of the reference encoding and the
    noise prediction are synchronised together.
    """
    latents = drop_conditions(latents, condition_dropout, generator)
    batch = latents.gt.shape[0]
    timesteps = torch.randint(0, alphas_cumprod.shape[0], (batch,), generator=generator)
    noise = torch.randn(latents.gt.shape, generator=generator).to(latents.gt)
    ab = alphas_cumprod[timesteps].to(latents.gt).view(-1, 1, 1, 1)
    noisy = ab.sqrt() * latents.gt + (1 - ab).sqrt() * noise
    device_t = timesteps.to(latents.gt.device)

    eps = denoiser(noisy, latents.lq, latents.refs, device_t)
    diffusion = diffusion_loss(loss, eps, noise)
    total, identity_value = diffusion, 0.0
    if identity_loss is not None:
        identity = identity_loss(noisy, eps, device_t, hq_images)
        total = total + identity.loss
        identity_value = float(identity.loss.detach())
    return StepOutput(total, float(diffusion.detach()), identity_value, timesteps)
