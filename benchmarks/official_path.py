"""ReF-LDM inference done the way the official code does it, on refface's modules, for side-by-side timing.

What differs from refface's exact mode (`RefLDMPipeline`), each as the official code has it:
- attention is written out (einsum with the full [tokens x tokens] weight matrix, q and k each scaled
  by head_dim^-1/4, softmax in float32) instead of PyTorch's fused scaled-dot-product attention, in
  the U-Net and in the VQGAN's mid-block (where the 5-reference wide image makes a 20480 x 20480 matrix);
- the null condition of guidance is N zero latents run through the reference pass for every photo, and
  its N identical copies are all attended to (refface computes it once per model and attends one copy
  with a log N bias);
- the VQGAN runs as plain modules (refface takes a memory-lean walk over the same modules for wide
  reference images and big batches, `refface.speedups.lean_vq`);
- 3x3 convolutions are PyTorch's direct ones (refface computes the large ones on CPU with Winograd:
  NNPACK's F(6x6, 3x3) on maps from 64 x 64, its own F(4x4, 3x3) on smaller ones, `refface.speedups.winograd`),
  and every other speed-up of `refface.speedups` is off too (`speedups.disabled()`);
- nothing is reused between photos.
The reference pass stops after the last attention layer here as in refface (the official code runs the
rest of the U-Net too), so if anything this favours the official path. The numbers it computes are the
same as refface's up to float rounding, which `bench_inference.py --compare-official` checks.
"""

from __future__ import annotations

import math

import torch
from diffusers.models.attention_processor import Attention

from refface import speedups
from refface.models.cache_kv import KVRecorder, ReferenceBatch
from refface.models.unet import denoise, reference_pass
from refface.models.vq import nearest_codes
from refface.pipelines.base import REFLDM_OPTIONS
from refface.pipelines.refldm import RefLDMPipeline
from refface.pipelines.schedule import sampling_scheduler


def einsum_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """[B, heads, T, d] attention as the official QKVAttention writes it: the whole weight matrix in memory."""
    scale = 1.0 / math.sqrt(math.sqrt(query.shape[-1]))
    weight = torch.einsum("bhtd,bhsd->bhts", query * scale, key * scale)
    weight = torch.softmax(weight.float(), dim=-1).to(weight.dtype)
    return torch.einsum("bhts,bhsd->bhtd", weight, value)


class OfficialCacheKVProcessor:
    """CacheKV self-attention with einsum attention and every null copy materialised (no log-k bias)."""

    def __init__(self, layer: str) -> None:
        self.layer = layer

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, context=None, **_) -> torch.Tensor:
        residual = hidden_states
        batch, channels, height, width = hidden_states.shape
        normed = attn.group_norm(hidden_states.view(batch, channels, height * width)).transpose(1, 2)
        heads = attn.heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, -1, heads, channels // heads).transpose(1, 2)

        query, key, value = split(attn.to_q(normed)), split(attn.to_k(normed)), split(attn.to_v(normed))
        if isinstance(context, KVRecorder):
            context.record(self.layer, key, value)
            out = einsum_attention(query, key, value)
        elif isinstance(context, ReferenceBatch):
            outputs, start = [], 0
            for count, refs in context.segments:
                q, k, v = (t[start : start + count] for t in (query, key, value))
                start += count
                if refs is not None and refs.num_references:
                    ref_k = refs.keys[self.layer].repeat(1, 1, refs.copies, 1).expand(count, -1, -1, -1)
                    ref_v = refs.values[self.layer].repeat(1, 1, refs.copies, 1).expand(count, -1, -1, -1)
                    k, v = torch.cat([k, ref_k], dim=2), torch.cat([v, ref_v], dim=2)
                outputs.append(einsum_attention(q, k, v))
            out = torch.cat(outputs)
        else:
            out = einsum_attention(query, key, value)
        out = attn.to_out[0](out.transpose(1, 2).reshape(batch, height * width, channels))
        return out.transpose(1, 2).reshape(batch, channels, height, width) + residual


class OfficialVQAttnProcessor:
    """The VQGAN mid-block attention of latent-diffusion's AttnBlock: one [hw x hw] weight matrix per image."""

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: None = None,
        attention_mask: None = None,
        temb: torch.Tensor | None = None,  # named so that diffusers does not warn about passing it
    ) -> torch.Tensor:
        residual = hidden_states
        batch, channels, height, width = hidden_states.shape
        normed = attn.group_norm(hidden_states.view(batch, channels, height * width)).transpose(1, 2)
        query, key, value = attn.to_q(normed), attn.to_k(normed), attn.to_v(normed)
        weight = torch.bmm(query, key.transpose(1, 2)) * channels**-0.5
        weight = torch.softmax(weight, dim=2)
        out = attn.to_out[0](torch.bmm(weight, value))
        return out.transpose(1, 2).reshape(batch, channels, height, width) + residual


def use_official_attention(pipe: RefLDMPipeline) -> RefLDMPipeline:
    for name, module in pipe.unet.named_modules():
        if isinstance(module, Attention):
            module.set_processor(OfficialCacheKVProcessor(name))
    for module in pipe.vqvae.modules():
        if isinstance(module, Attention):
            module.set_processor(OfficialVQAttnProcessor())
    return pipe


@torch.no_grad()
def restore_like_official(
    pipe: RefLDMPipeline, lq: torch.Tensor, refs: torch.Tensor, noise: torch.Tensor, steps: int, guidance: float
) -> torch.Tensor:
    """One photo, start to end, with the official per-photo work; `pipe` must have `use_official_attention`.

    lq [1, 3, S, S] and refs [N, 3, S, S] in [-1, 1]; returns the image [1, 3, S, S] in [0, 1].
    """
    with speedups.disabled():  # every module's plain computation, as the official code runs
        return _restore(pipe, lq, refs, noise, steps, guidance)


def _restore(
    pipe: RefLDMPipeline, lq: torch.Tensor, refs: torch.Tensor, noise: torch.Tensor, steps: int, guidance: float
) -> torch.Tensor:
    size, vq = pipe.latent_size, pipe.vqvae
    wide = vq.quant_conv(vq.encoder(torch.cat(list(refs), dim=-1)[None]))
    ref_latents = torch.cat(wide.split(size, dim=-1), dim=0)
    lq_latent = vq.quant_conv(vq.encoder(lq))
    null = reference_pass(pipe.unet, torch.zeros_like(ref_latents))  # every photo, N zero latents
    cache = reference_pass(pipe.unet, ref_latents)
    context = ReferenceBatch(((1, null), (1, cache)))
    scheduler = sampling_scheduler(pipe.scheduler, REFLDM_OPTIONS.with_changes(steps=steps))
    latents = noise.clone()
    for t in scheduler.timesteps:
        model_input = torch.cat([latents, lq_latent], dim=1)
        eps_null, eps_ref = denoise(pipe.unet, torch.cat([model_input, model_input]), t, context).chunk(2)
        latents = scheduler.step(eps_null + guidance * (eps_ref - eps_null), t, latents).prev_sample
    return ((vq.decoder(vq.post_quant_conv(nearest_codes(vq, latents))) + 1.0) / 2.0).clamp(0.0, 1.0)
