"""The names a ReF-LDM U-Net's self-attention layers have in the official code, which ONNX hosts bind.

refface's U-Net is a diffusers `UNet2DModel` (layers such as `down_blocks.1.attentions.0`); the official
CompVis code and the face-swap applications that run ReF-LDM through ONNX Runtime name the same layers by the
openaimodel path of their attention module (`input_blocks.4.1.attention`), and bind each layer's reference
keys/values as `<that path with '.' replaced by '_'>_k_ext` / `_v_ext`. This module derives that mapping from
the U-Net's own block layout, so it holds for any architecture refface can build.
"""

from __future__ import annotations

from dataclasses import dataclass

from diffusers import UNet2DModel


@dataclass(frozen=True)
class AttentionLayer:
    """One CacheKV layer: its diffusers name, its official name, its heads, head width and tokens per reference."""

    diffusers_name: str
    official_name: str
    heads: int
    head_dim: int
    tokens: int

    @property
    def onnx_name(self) -> str:
        """`input_blocks_4_1_attention`: the official path as ONNX hosts spell it."""
        return self.official_name.replace(".", "_")

    @property
    def key_name(self) -> str:
        return f"{self.onnx_name}_k_ext"

    @property
    def value_name(self) -> str:
        return f"{self.onnx_name}_v_ext"


def attention_layers(unet: UNet2DModel) -> list[AttentionLayer]:
    """Every self-attention layer of `unet` in the order the U-Net runs them (down, middle, up).

    The official U-Net numbers its blocks as one list per side: input block 0 is the first convolution, then
    one block per residual block (its attention is item 1 of the block) and one per downsampler; output
    blocks are one per residual block of the up path.
    """
    size = int(unet.config.sample_size)
    layers: list[AttentionLayer] = []

    def add(diffusers_name: str, official_name: str, attention, resolution: int) -> None:
        channels = attention.to_q.out_features
        layers.append(
            AttentionLayer(
                diffusers_name, official_name, attention.heads, channels // attention.heads, resolution * resolution
            )
        )

    block = 1
    resolution = size
    for d, down in enumerate(unet.down_blocks):
        attentions = getattr(down, "attentions", None)
        for j in range(len(down.resnets)):
            if attentions:
                add(f"down_blocks.{d}.attentions.{j}", f"input_blocks.{block}.1.attention", attentions[j], resolution)
            block += 1
        if down.downsamplers:
            block += 1
            resolution //= 2
    for j, attention in enumerate(unet.mid_block.attentions):
        if attention is not None:
            add(f"mid_block.attentions.{j}", f"middle_block.{2 * j + 1}.attention", attention, resolution)
    block = 0
    for u, up in enumerate(unet.up_blocks):
        attentions = getattr(up, "attentions", None)
        for j in range(len(up.resnets)):
            if attentions:
                add(f"up_blocks.{u}.attentions.{j}", f"output_blocks.{block}.1.attention", attentions[j], resolution)
            block += 1
        if up.upsamplers:
            resolution *= 2
    return layers
