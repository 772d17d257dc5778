"""Map official ReF-LDM / taming VQGAN state dicts onto the diffusers modules.

Every official parameter name is derived from the architecture, so a missing or unexpected key is
detected and reported with its name instead of being silently ignored.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from refface.errors import RefFaceError
from refface.models.config import UNetArchitecture, VQArchitecture

Transform = Callable[[torch.Tensor], torch.Tensor]
# (official key, diffusers key, transform of the tensor)
Rule = tuple[str, str, Transform]


def _same(t: torch.Tensor) -> torch.Tensor:
    return t


def _squeeze_1x1(t: torch.Tensor) -> torch.Tensor:
    """A 1x1 convolution weight [out, in, 1(, 1)] as a linear weight [out, in]."""
    return t.reshape(t.shape[0], t.shape[1]) if t.ndim > 2 else t


def _params(src: str, dst: str, names: tuple[str, ...] = ("weight", "bias"), transform: Transform = _same):
    for name in names:
        yield f"{src}.{name}", f"{dst}.{name}", transform


def _unet_resblock(src: str, dst: str, has_skip: bool) -> Iterator[Rule]:
    yield from _params(f"{src}.in_layers.0", f"{dst}.norm1")
    yield from _params(f"{src}.in_layers.2", f"{dst}.conv1")
    yield from _params(f"{src}.emb_layers.1", f"{dst}.time_emb_proj")
    yield from _params(f"{src}.out_layers.0", f"{dst}.norm2")
    yield from _params(f"{src}.out_layers.3", f"{dst}.conv2")
    if has_skip:
        yield from _params(f"{src}.skip_connection", f"{dst}.conv_shortcut")


def _legacy_qkv_part(heads: int, part: int) -> Transform:
    """Select q (0), k (1) or v (2) from a legacy qkv projection laid out [head][q,k,v][dim]."""

    def take(t: torch.Tensor) -> torch.Tensor:
        t = _squeeze_1x1(t)
        width = t.shape[0] // 3
        grouped = t.reshape(heads, 3, width // heads, *t.shape[1:])
        return grouped[:, part].reshape(width, *t.shape[1:]).contiguous()

    return take


def _unet_attention(src: str, dst: str, channels: int, head_channels: int) -> Iterator[Rule]:
    heads = channels // head_channels
    yield from _params(f"{src}.norm", f"{dst}.group_norm")
    for part, name in enumerate(("to_q", "to_k", "to_v")):
        yield from _params(f"{src}.qkv", f"{dst}.{name}", transform=_legacy_qkv_part(heads, part))
    yield from _params(f"{src}.proj_out", f"{dst}.to_out.0", transform=_squeeze_1x1)


def unet_rules(arch: UNetArchitecture) -> list[Rule]:
    """Official openaimodel parameter names -> diffusers UNet2DModel names."""
    rules: list[Rule] = []
    rules += _params("time_embed.0", "time_embedding.linear_1")
    rules += _params("time_embed.2", "time_embedding.linear_2")
    rules += _params("input_blocks.0.0", "conv_in")
    widths = [arch.model_channels * m for m in arch.channel_mult]
    attention = arch.attention_levels()
    levels = len(widths)

    block = 1
    skip_widths = [arch.model_channels]
    channels = arch.model_channels
    for level, width in enumerate(widths):
        for j in range(arch.num_res_blocks):
            dst = f"down_blocks.{level}"
            rules += _unet_resblock(f"input_blocks.{block}.0", f"{dst}.resnets.{j}", channels != width)
            channels = width
            if attention[level]:
                rules += _unet_attention(
                    f"input_blocks.{block}.1", f"{dst}.attentions.{j}", width, arch.num_head_channels
                )
            skip_widths.append(width)
            block += 1
        if level != levels - 1:
            rules += _params(f"input_blocks.{block}.0.op", f"down_blocks.{level}.downsamplers.0.conv")
            skip_widths.append(width)
            block += 1

    rules += _unet_resblock("middle_block.0", "mid_block.resnets.0", False)
    rules += _unet_attention("middle_block.1", "mid_block.attentions.0", channels, arch.num_head_channels)
    rules += _unet_resblock("middle_block.2", "mid_block.resnets.1", False)

    block = 0
    for up_index, level in enumerate(reversed(range(levels))):
        width = widths[level]
        for j in range(arch.num_res_blocks + 1):
            src = f"output_blocks.{block}"
            dst = f"up_blocks.{up_index}"
            in_channels = channels + skip_widths.pop()
            rules += _unet_resblock(f"{src}.0", f"{dst}.resnets.{j}", in_channels != width)
            channels = width
            layer = 1
            if attention[level]:
                rules += _unet_attention(f"{src}.1", f"{dst}.attentions.{j}", width, arch.num_head_channels)
                layer = 2
            if j == arch.num_res_blocks and level != 0:
                rules += _params(f"{src}.{layer}.conv", f"{dst}.upsamplers.0.conv")
            block += 1

    rules += _params("out.0", "conv_norm_out")
    rules += _params("out.2", "conv_out")
    return rules


def _vq_resblock(src: str, dst: str, has_shortcut: bool) -> Iterator[Rule]:
    for name in ("norm1", "conv1", "norm2", "conv2"):
        yield from _params(f"{src}.{name}", f"{dst}.{name}")
    if has_shortcut:
        yield from _params(f"{src}.nin_shortcut", f"{dst}.conv_shortcut")


def _vq_attention(src: str, dst: str) -> Iterator[Rule]:
    yield from _params(f"{src}.norm", f"{dst}.group_norm")
    for official, ours in (("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("proj_out", "to_out.0")):
        yield from _params(f"{src}.{official}", f"{dst}.{ours}", transform=_squeeze_1x1)


def _vq_mid(side: str) -> Iterator[Rule]:
    yield from _vq_resblock(f"{side}.mid.block_1", f"{side}.mid_block.resnets.0", False)
    yield from _vq_attention(f"{side}.mid.attn_1", f"{side}.mid_block.attentions.0")
    yield from _vq_resblock(f"{side}.mid.block_2", f"{side}.mid_block.resnets.1", False)


def vq_rules(arch: VQArchitecture) -> list[Rule]:
    """taming-transformers VQModel parameter names -> diffusers VQModel names."""
    widths = [arch.ch * m for m in arch.ch_mult]
    levels = len(widths)
    rules: list[Rule] = []

    rules += _params("encoder.conv_in", "encoder.conv_in")
    channels = arch.ch
    for level, width in enumerate(widths):
        for j in range(arch.num_res_blocks):
            rules += _vq_resblock(
                f"encoder.down.{level}.block.{j}", f"encoder.down_blocks.{level}.resnets.{j}", channels != width
            )
            channels = width
        if level != levels - 1:
            rules += _params(
                f"encoder.down.{level}.downsample.conv", f"encoder.down_blocks.{level}.downsamplers.0.conv"
            )
    rules += _vq_mid("encoder")
    rules += _params("encoder.norm_out", "encoder.conv_norm_out")
    rules += _params("encoder.conv_out", "encoder.conv_out")

    rules += _params("quant_conv", "quant_conv")
    rules += _params("quantize.embedding", "quantize.embedding", names=("weight",))
    rules += _params("post_quant_conv", "post_quant_conv")

    rules += _params("decoder.conv_in", "decoder.conv_in")
    rules += _vq_mid("decoder")
    channels = widths[-1]
    for up_index, level in enumerate(reversed(range(levels))):
        width = widths[level]
        for j in range(arch.num_res_blocks + 1):
            rules += _vq_resblock(
                f"decoder.up.{level}.block.{j}", f"decoder.up_blocks.{up_index}.resnets.{j}", channels != width
            )
            channels = width
        if level != 0:
            rules += _params(f"decoder.up.{level}.upsample.conv", f"decoder.up_blocks.{up_index}.upsamplers.0.conv")
    rules += _params("decoder.norm_out", "decoder.conv_norm_out")
    rules += _params("decoder.conv_out", "decoder.conv_out")
    return rules


def _listing(keys: list[str], limit: int = 5) -> str:
    shown = ", ".join(sorted(keys)[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def apply_rules(official: dict[str, torch.Tensor], rules: list[Rule], source: str) -> dict[str, torch.Tensor]:
    """Convert `official` with `rules`; any missing or unexpected key fails with one sentence."""
    needed = {src for src, _, _ in rules}
    missing = sorted(needed - official.keys())
    unexpected = sorted(official.keys() - needed)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing ({_listing(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected ({_listing(unexpected)})")
        raise RefFaceError(
            f"The weights in {source} do not fit the architecture: {'; '.join(parts)} keys "
            "(pass the matching --config?)."
        )
    return {dst: transform(official[src]) for src, dst, transform in rules}
