"""DDIM restoration with any `ReferenceDenoiser`, for validation samples of every reference integration.

The product pipeline (`RefLDMPipeline`) is CacheKV-only and optimised for reuse of a reference
cache; training also validates the ablation denoisers, so this loop goes through the generic
`encode_references` / `predict` pair, in the pipelines' sampling loop (`refface.pipelines.sampler`).
For CacheKV it gives the pipeline's result (tested).
"""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler, VQModel

from refface.models.reference_integration import ReferenceDenoiser
from refface.models.vq import decode_quantized, encode_unquantized
from refface.pipelines.base import REFLDM_OPTIONS
from refface.pipelines.noise import item_noise
from refface.pipelines.sampler import sample
from refface.pipelines.schedule import sampling_scheduler
from refface.train.diffusion_step import encode_references_wide


@torch.no_grad()
def restore_batch(
    denoiser: ReferenceDenoiser,
    vq: VQModel,
    scheduler: DDIMScheduler,
    lq: torch.Tensor,
    refs: torch.Tensor,
    steps: int = REFLDM_OPTIONS.steps,
    guidance_scale: float = REFLDM_OPTIONS.guidance,
    seed: int = 0,
) -> torch.Tensor:
    """LQ images [B, 3, S, S] and references [B, N, 3, S, S] in [-1, 1] -> restored images in [-1, 1].

    Item i starts from the noise of seed `seed + i`; guidance pushes away from zeroed references.
    """
    lq_latent = encode_unquantized(vq, lq)
    batch, channels, height, width = lq_latent.shape
    if refs.shape[1]:
        ref_latents = encode_references_wide(vq, refs)
    else:
        ref_latents = lq_latent.new_zeros(batch, 0, channels, height, width)
    context = denoiser.encode_references(ref_latents)
    guided = ref_latents.shape[1] > 0 and guidance_scale != 1.0
    null = denoiser.encode_references(torch.zeros_like(ref_latents)) if guided else None

    def predict(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        x, step_t = x.to(lq_latent.dtype), t.expand(batch)
        eps = denoiser.predict(x, lq_latent, context, step_t).float()
        if not guided:
            return eps
        eps_null = denoiser.predict(x, lq_latent, null, step_t).float()
        return eps_null + guidance_scale * (eps - eps_null)

    noise = item_noise((channels, height, width), [seed + i for i in range(batch)]).to(lq_latent)
    ddim = sampling_scheduler(scheduler, REFLDM_OPTIONS.with_changes(steps=steps))
    latents = sample(predict, ddim, noise.float())  # no CUDA graphs: the models are being trained
    return decode_quantized(vq, latents.to(lq_latent.dtype))
