"""The ReF-LDM denoiser: a diffusers UNet2DModel whose self-attention layers use CacheKV.

diffusers' UNet2DModel has exactly the block layout of CompVis' openaimodel UNet without
cross-attention (ResBlocks, legacy attention blocks, conv down/up-sampling), so the official
weights map onto it one to one. Its own forward does not hand per-call arguments to attention
layers, so one walk over the same modules (`_walk`) passes the CacheKV context explicitly, in three
variants: `denoise` (the plain prediction), `denoise_copies` (guidance's branches sharing the layers
before the first attention) and `reference_pass` (recording keys/values, stopping after the last
attention layer).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.utils.checkpoint
from diffusers import UNet2DModel
from diffusers.models.attention_processor import Attention

from refface.models.cache_kv import CacheKVAttnProcessor, CacheKVContext, KVRecorder, ReferenceKV
from refface.models.config import UNetArchitecture


def build_unet(arch: UNetArchitecture) -> UNet2DModel:
    """A randomly initialised denoiser with the given architecture and CacheKV processors."""
    levels = arch.attention_levels()
    down = tuple("AttnDownBlock2D" if attn else "DownBlock2D" for attn in levels)
    up = tuple("AttnUpBlock2D" if attn else "UpBlock2D" for attn in reversed(levels))
    unet = UNet2DModel(
        sample_size=arch.image_size,
        in_channels=arch.in_channels,
        out_channels=arch.out_channels,
        down_block_types=down,
        up_block_types=up,
        block_out_channels=tuple(arch.model_channels * m for m in arch.channel_mult),
        layers_per_block=arch.num_res_blocks,
        attention_head_dim=arch.num_head_channels,
        norm_num_groups=32,
        norm_eps=1e-5,
        act_fn="silu",
        time_embedding_type="positional",
        flip_sin_to_cos=True,
        freq_shift=0,
        downsample_padding=1,
        add_attention=True,
    )
    install_cache_kv(unet)
    return unet


def install_cache_kv(unet: UNet2DModel) -> None:
    """Give every self-attention layer of `unet` a CacheKV processor named after the layer."""
    for name, module in unet.named_modules():
        if isinstance(module, Attention):
            module.set_processor(CacheKVAttnProcessor(name))


def _run_resnet(resnet: torch.nn.Module, hidden: torch.Tensor, emb: torch.Tensor, checkpoint: bool) -> torch.Tensor:
    # Residual blocks hold most activations; recomputing them in the backward pass trades time for memory.
    # Attention layers are never recomputed: a recording reference pass must record each layer once.
    if checkpoint:
        return torch.utils.checkpoint.checkpoint(resnet, hidden, emb, use_reentrant=False)
    return resnet(hidden, emb)


def last_attention_block(unet: UNet2DModel) -> int:
    """Index of the last up block holding self-attention: a reference pass can stop after it."""
    with_attention = [i for i, block in enumerate(unet.up_blocks) if getattr(block, "attentions", None)]
    return with_attention[-1] if with_attention else -1


def _batch_of(emb: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """The time embedding repeated to the batch of `hidden` (after the walk has widened)."""
    return emb if emb.shape[0] == hidden.shape[0] else emb.repeat(hidden.shape[0] // emb.shape[0], 1)


def _same(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


@dataclass(frozen=True)
class _Walk:
    """What differs between the passes through the U-Net's modules: the CacheKV context every attention layer
    gets, where guidance's copies of the batch start (`widen`, applied to each attention layer's input and to
    the skips and the walk from the first up block on) and the up block after which a recording pass stops."""

    context: CacheKVContext = None
    widen: Callable[[torch.Tensor], torch.Tensor] = _same
    stop_after: int | None = None

    def attend(self, attn: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        # Call the processor directly: Attention.forward would inspect its signature on every call.
        return attn.processor(attn, self.widen(hidden), context=self.context)


def _walk(unet: UNet2DModel, sample: torch.Tensor, timestep: torch.Tensor, walk: _Walk) -> torch.Tensor | None:
    """`UNet2DModel.forward`'s module order, with `walk`'s attention context, widening and early stop."""
    timesteps = torch.as_tensor(timestep, device=sample.device)
    if timesteps.ndim == 0:
        timesteps = timesteps[None]
    emb = unet.time_embedding(unet.time_proj(timesteps.expand(sample.shape[0])).to(sample.dtype))
    checkpoint = unet.is_gradient_checkpointing and torch.is_grad_enabled()

    hidden = unet.conv_in(sample)
    skips = [hidden]
    for block in unet.down_blocks:
        attentions = getattr(block, "attentions", None) or [None] * len(block.resnets)
        for resnet, attn in zip(block.resnets, attentions, strict=True):
            hidden = _run_resnet(resnet, hidden, _batch_of(emb, hidden), checkpoint)
            if attn is not None:
                hidden = walk.attend(attn, hidden)
            skips.append(hidden)
        for downsampler in block.downsamplers or []:
            hidden = downsampler(hidden)
            skips.append(hidden)

    mid = unet.mid_block
    hidden = _run_resnet(mid.resnets[0], hidden, _batch_of(emb, hidden), checkpoint)
    for attn, resnet in zip(mid.attentions, mid.resnets[1:], strict=True):
        if attn is not None:
            hidden = walk.attend(attn, hidden)
        hidden = _run_resnet(resnet, hidden, _batch_of(emb, hidden), checkpoint)

    hidden = walk.widen(hidden)  # from here on every copy has its own values
    emb = _batch_of(emb, hidden)
    for index, block in enumerate(unet.up_blocks):
        attentions = getattr(block, "attentions", None) or [None] * len(block.resnets)
        for resnet, attn in zip(block.resnets, attentions, strict=True):
            hidden = _run_resnet(resnet, torch.cat([hidden, walk.widen(skips.pop())], dim=1), emb, checkpoint)
            if attn is not None:
                hidden = walk.attend(attn, hidden)
        if index == walk.stop_after:
            return None
        for upsampler in block.upsamplers or []:
            hidden = upsampler(hidden)
    if walk.stop_after is not None:
        return None
    return unet.conv_out(unet.conv_act(unet.conv_norm_out(hidden)))


def denoise(
    unet: UNet2DModel, sample: torch.Tensor, timestep: torch.Tensor, context: CacheKVContext = None
) -> torch.Tensor:
    """The U-Net's noise prediction for `sample` at `timestep` ([B] or scalar), with `context` handed to every
    CacheKV layer; without one it is `unet(sample, timestep).sample`."""
    if isinstance(context, KVRecorder):
        raise ValueError("A reference pass records keys and values: use reference_pass, not denoise.")
    return _walk(unet, sample, timestep, _Walk(context))


def denoise_copies(
    unet: UNet2DModel, sample: torch.Tensor, timestep: torch.Tensor, context: CacheKVContext, copies: int
) -> torch.Tensor:
    """`denoise(unet, torch.cat([sample] * copies), timestep, context)`, for guidance's branches: the same input
    under several contexts, so the layers before the first attention run once and the batch is repeated only
    where the copies start to differ."""
    if copies < 1:
        raise ValueError("copies must be at least 1.")
    if copies == 1:
        return denoise(unet, sample, timestep, context)
    batch = sample.shape[0]

    def widen(tensor: torch.Tensor) -> torch.Tensor:
        return tensor if tensor.shape[0] == batch * copies else tensor.repeat(copies, 1, 1, 1)

    return _walk(unet, sample, timestep, _Walk(context, widen))


def reference_pass(unet: UNet2DModel, ref_latents: torch.Tensor) -> ReferenceKV:
    """CacheKV's reference pass: each latent [N, C, h, w], zero-padded to the U-Net's 2C input channels,
    through the U-Net once at t = 0, keeping every self-attention layer's keys and values."""
    recorder = KVRecorder()
    padded = torch.cat([ref_latents, torch.zeros_like(ref_latents)], dim=1)
    timestep = torch.zeros((), dtype=torch.long, device=ref_latents.device)
    _walk(unet, padded, timestep, _Walk(recorder, stop_after=last_attention_block(unet)))  # only keys/values matter
    return recorder.finish(num_references=ref_latents.shape[0])
