"""The reference-integration alternatives that ReF-LDM's ablation table compares CacheKV against.

Each is a `ReferenceDenoiser`, so training and sampling treat them exactly like CacheKV:

- channel-concat: the reference latents are stacked onto the U-Net input channels next to the noisy
  and LQ latents. The simplest conditioning, but it fixes the number of references at build time and
  only lets a reference pixel inform the same location of the output.
- spatial-concat: the [noisy, LQ] latent and every (zero-padded) reference latent are tiled side by
  side into one wide latent, so the unchanged U-Net's convolutions and self-attention see all tiles;
  only the first tile's output is kept. Any number of references works, at quadratic attention cost.
- cross-attention: reference latent vectors (plus a learned position embedding) become tokens that a
  decoupled cross-attention, added to every self-attention layer IP-Adapter style, attends to. The
  references never pass through the U-Net, so they get no denoiser features, unlike CacheKV.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from diffusers import UNet2DModel
from diffusers.models.attention_processor import Attention
from torch import nn

from refface.errors import RefFaceError
from refface.models.cache_kv import CacheKVAttnProcessor
from refface.models.config import UNetArchitecture
from refface.models.reference_denoiser import ReferenceDenoiser
from refface.models.unet import build_unet, denoise


def _check_batch_and_size(noisy: torch.Tensor, refs: torch.Tensor, integration: str) -> None:
    """Reference latents must belong to the same items and have the latent's spatial size."""
    if refs.shape[0] != noisy.shape[0] or refs.shape[-2:] != noisy.shape[-2:]:
        raise RefFaceError(
            f"The {integration} denoiser needs reference latents [{noisy.shape[0]}, N, C, "
            f"{noisy.shape[-2]}, {noisy.shape[-1]}] matching the noisy latent; got {tuple(refs.shape)}."
        )


class _InputReferenceDenoiser(ReferenceDenoiser):
    """Denoisers that take the reference latents themselves as input: encoding them is a no-op."""

    def encode_references(self, refs: torch.Tensor) -> torch.Tensor:
        self.check_references(refs)
        return refs


class ChannelConcatDenoiser(_InputReferenceDenoiser):
    """U-Net input [noisy, LQ, ref_1..ref_N] on channels, for a number of references fixed at build time."""

    name = "channel-concat"

    @classmethod
    def build(cls, arch: UNetArchitecture, num_refs: int) -> ChannelConcatDenoiser:
        latent_channels = arch.out_channels
        wide = dataclasses.replace(arch, in_channels=arch.in_channels + num_refs * latent_channels)
        return cls(build_unet(wide), num_refs)

    def predict(
        self, noisy: torch.Tensor, lq: torch.Tensor, context: torch.Tensor | None, timesteps: torch.Tensor
    ) -> torch.Tensor:
        count = 0 if context is None else context.shape[1]
        if count not in (0, self.num_refs):
            raise RefFaceError(
                f"This channel-concat denoiser was built for {self.num_refs} references but got {count}."
            )
        if context is None or count == 0:
            # No references is the null condition: the same zeros that dropped references are in training.
            ref_channels = noisy.new_zeros(noisy.shape[0], self.num_refs * self.latent_channels, *noisy.shape[-2:])
        else:
            _check_batch_and_size(noisy, context, self.name)
            ref_channels = context.flatten(1, 2).to(noisy.dtype)
        return denoise(self.unet, torch.cat([noisy, lq, ref_channels], dim=1), timesteps, None)


class SpatialConcatDenoiser(_InputReferenceDenoiser):
    """The unchanged U-Net on [noisy+LQ | ref_1 | ... | ref_N] tiled along the width; keeps the first tile."""

    name = "spatial-concat"

    @classmethod
    def build(cls, arch: UNetArchitecture, num_refs: int) -> SpatialConcatDenoiser:
        return cls(build_unet(arch), num_refs)

    def predict(
        self, noisy: torch.Tensor, lq: torch.Tensor, context: torch.Tensor | None, timesteps: torch.Tensor
    ) -> torch.Tensor:
        sample = torch.cat([noisy, lq], dim=1)
        if context is None or context.shape[1] == 0:
            return denoise(self.unet, sample, timesteps, None)
        _check_batch_and_size(noisy, context, self.name)
        batch, count, channels, height, width = context.shape
        # Pad references to the U-Net's 2C input channels with zeros, as CacheKV's reference pass does.
        padded = torch.cat([context, torch.zeros_like(context)], dim=2).to(sample.dtype)
        tiles = padded.permute(0, 2, 3, 1, 4).reshape(batch, 2 * channels, height, count * width)
        wide = torch.cat([sample, tiles], dim=-1)
        return denoise(self.unet, wide, timesteps, None)[..., :width]


class ReferenceCrossAttnProcessor(nn.Module):
    """Self-attention plus a decoupled cross-attention to reference tokens (IP-Adapter style).

    The self-attention part is CacheKV's plain self-attention, so with `context` None the layer is
    exactly the original U-Net layer. The reference part uses the same query over keys/values that
    `to_k_ref` / `to_v_ref` project from the reference tokens [B, L, latent_channels]; its result
    goes through the layer's output projection (without a second bias), as IP-Adapter adds it before
    `to_out`. Being an nn.Module, the processor's weights live in the U-Net's state dict.
    """

    def __init__(self, layer: str, latent_channels: int, inner_channels: int):
        super().__init__()
        self.self_attention = CacheKVAttnProcessor(layer)
        self.to_k_ref = nn.Linear(latent_channels, inner_channels)
        self.to_v_ref = nn.Linear(latent_channels, inner_channels)
        # Small values so a new layer starts close to the plain U-Net yet every new weight gets gradients.
        nn.init.normal_(self.to_v_ref.weight, std=0.02)
        nn.init.zeros_(self.to_v_ref.bias)
        nn.init.zeros_(self.to_k_ref.bias)

    def forward(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
    ) -> torch.Tensor:
        out = self.self_attention(attn, hidden_states, encoder_hidden_states, attention_mask, temb, context=None)
        if context is None:
            return out
        batch, channels, height, width = hidden_states.shape
        if context.shape[0] != batch:
            raise ValueError(f"Reference tokens cover {context.shape[0]} samples but the batch has {batch}.")
        heads = attn.heads

        def split_heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, t.shape[1], heads, -1).transpose(1, 2)

        normed = attn.group_norm(hidden_states.view(batch, channels, height * width)).transpose(1, 2)
        query = split_heads(attn.to_q(normed))
        tokens = context.to(self.to_k_ref.weight.dtype)
        key = split_heads(self.to_k_ref(tokens))
        value = split_heads(self.to_v_ref(tokens))
        ref = F.scaled_dot_product_attention(query, key, value)
        ref = ref.transpose(1, 2).reshape(batch, height * width, -1)
        ref = F.linear(ref, attn.to_out[0].weight)
        ref = ref.transpose(1, 2).reshape(batch, channels, height, width)
        return out + ref / attn.rescale_output_factor


def install_reference_cross_attention(unet: UNet2DModel, latent_channels: int) -> None:
    """Give every self-attention layer of `unet` a ReferenceCrossAttnProcessor (new, randomly initialised)."""
    for name, module in unet.named_modules():
        if isinstance(module, Attention):
            processor = ReferenceCrossAttnProcessor(name, latent_channels, module.to_q.out_features)
            module.set_processor(processor.to(module.to_q.weight.device, module.to_q.weight.dtype))


class CrossAttentionDenoiser(ReferenceDenoiser):
    """Reference latent vectors as tokens for a cross-attention added to every self-attention layer.

    A learned per-position embedding (on the latent grid, resized for other sizes) is added to each
    reference so the tokens carry where on the face they come from; references are otherwise an
    unordered set, so any number works.
    """

    name = "cross-attention"

    def __init__(self, unet: UNet2DModel, num_refs: int):
        super().__init__(unet, num_refs)
        install_reference_cross_attention(unet, self.latent_channels)
        size = int(unet.config.sample_size)
        self.ref_position = nn.Parameter(torch.randn(1, self.latent_channels, size, size) * 0.02)

    @classmethod
    def build(cls, arch: UNetArchitecture, num_refs: int) -> CrossAttentionDenoiser:
        return cls(build_unet(arch), num_refs)

    def encode_references(self, refs: torch.Tensor) -> torch.Tensor | None:
        """Reference tokens [B, N*h*w, C] with position embeddings, or None without references."""
        self.check_references(refs)
        batch, count, channels, height, width = refs.shape
        if count == 0:
            return None
        position = self.ref_position
        if position.shape[-2:] != (height, width):
            position = F.interpolate(position, size=(height, width), mode="bilinear", align_corners=False)
        tokens = refs + position.to(refs.dtype)[:, None]
        return tokens.permute(0, 1, 3, 4, 2).reshape(batch, count * height * width, channels)

    def predict(
        self, noisy: torch.Tensor, lq: torch.Tensor, context: torch.Tensor | None, timesteps: torch.Tensor
    ) -> torch.Tensor:
        if context is not None and (
            context.ndim != 3 or context.shape[0] != noisy.shape[0] or context.shape[-1] != self.latent_channels
        ):
            raise RefFaceError(
                f"The cross-attention denoiser needs reference tokens [{noisy.shape[0]}, tokens, "
                f"{self.latent_channels}] from encode_references; got {tuple(context.shape)}."
            )
        return denoise(self.unet, torch.cat([noisy, lq], dim=1), timesteps, context)


ABLATIONS: dict[str, type[ReferenceDenoiser]] = {
    ChannelConcatDenoiser.name: ChannelConcatDenoiser,
    CrossAttentionDenoiser.name: CrossAttentionDenoiser,
    SpatialConcatDenoiser.name: SpatialConcatDenoiser,
}
