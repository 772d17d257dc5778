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
from diffusers import UNet2DModel, VQModel

from refface.models.cache_kv import KVRecorder, ReferenceBatch, ReferenceKV
from refface.models.unet import denoise
from refface.models.vq import encode_unquantized


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
def encode_batch(vq: VQModel, gt: torch.Tensor, lq: torch.Tensor, refs: torch.Tensor | None) -> LatentBatch:
    """Unquantized encoder latents, references encoded as one wide image per item as the official code does."""
    gt_latent = encode_unquantized(vq, gt)
    lq_latent = encode_unquantized(vq, lq)
    if refs is None or refs.shape[1] == 0:
        return LatentBatch(gt_latent, lq_latent, gt_latent.new_zeros(gt_latent.shape[0], 0, *gt_latent.shape[1:]))
    batch, count = refs.shape[:2]
    wide = torch.cat(refs.unbind(1), dim=-1)  # [B, 3, S, N*S]
    latent = encode_unquantized(vq, wide)
    per_ref = torch.stack(latent.split(gt_latent.shape[-1], dim=-1), dim=1)  # [B, N, C, h, w]
    return LatentBatch(gt_latent, lq_latent, per_ref)


def split_reference_kv(cache: ReferenceKV, batch: int) -> list[ReferenceKV]:
    """Cut a reference pass over B items x N references into one cache per item (tokens are item-major)."""
    per_item = cache.num_references // batch
    caches = []
    for item in range(batch):

        def part(tensor: torch.Tensor, item: int = item) -> torch.Tensor:
            tokens = tensor.shape[2] // batch
            return tensor[:, :, item * tokens : (item + 1) * tokens]

        caches.append(
            ReferenceKV(
                {name: part(k) for name, k in cache.keys.items()},
                {name: part(v) for name, v in cache.values.items()},
                per_item,
            )
        )
    return caches


def reference_context(unet: UNet2DModel, ref_latents: torch.Tensor) -> ReferenceBatch | None:
    """The CacheKV context of a batch: each item attends to the keys/values of its own references."""
    batch, count = ref_latents.shape[:2]
    if count == 0:
        return None
    flat = ref_latents.flatten(0, 1)
    recorder = KVRecorder()
    padded = torch.cat([flat, torch.zeros_like(flat)], dim=1)
    denoise(unet, padded, torch.zeros((), dtype=torch.long, device=flat.device), recorder)
    caches = split_reference_kv(recorder.finish(batch * count), batch)
    return ReferenceBatch(tuple((1, cache) for cache in caches))


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
    unet: UNet2DModel,
    latents: LatentBatch,
    alphas_cumprod: torch.Tensor,
    generator: torch.Generator,
    condition_dropout: float = 0.1,
    identity_loss=None,
    hq_images: torch.Tensor | None = None,
) -> StepOutput:
    """eps-prediction MSE (+ the identity loss) for one batch; gradients reach the U-Net through both passes."""
    latents = drop_conditions(latents, condition_dropout, generator)
    batch = latents.gt.shape[0]
    timesteps = torch.randint(0, alphas_cumprod.shape[0], (batch,), generator=generator)
    noise = torch.randn(latents.gt.shape, generator=generator).to(latents.gt)
    ab = alphas_cumprod[timesteps].to(latents.gt).view(-1, 1, 1, 1)
    noisy = ab.sqrt() * latents.gt + (1 - ab).sqrt() * noise
    device_t = timesteps.to(latents.gt.device)

    context = reference_context(unet, latents.refs)
    eps = denoise(unet, torch.cat([noisy, latents.lq], dim=1), device_t, context)
    diffusion = F.mse_loss(eps.float(), noise.float())
    loss, identity_value = diffusion, 0.0
    if identity_loss is not None:
        identity = identity_loss(noisy, eps, device_t, hq_images)
        loss = loss + identity.loss
        identity_value = float(identity.loss.detach())
    return StepOutput(loss, float(diffusion.detach()), identity_value, timesteps)
