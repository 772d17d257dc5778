"""The four networks an ONNX host runs, as `nn.Module`s with plain tensor inputs and outputs.

Each wrapper calls refface's own inference functions (`encode_unquantized`, `decode_quantized`,
`reference_pass`, `denoise` with the CacheKV processor), so the exported graphs compute what refface computes;
only the CacheKV cache changes hands: the reference pass returns every layer's keys/values as outputs and
the denoiser takes them as inputs. Keys/values use the layout face-swap hosts bind: [batch, heads, head_dim,
tokens], head width before tokens, references laid end to end along the tokens. The VQ graphs are traced from
a copy whose GroupNorms are `NestedGroupNorm`s (the same function, exact in onnxruntime at 512 x 512).
"""

from __future__ import annotations

import copy

import torch
from diffusers import UNet2DModel, VQModel
from torch import nn

from refface.export.names import AttentionLayer, attention_layers
from refface.models.cache_kv import ReferenceBatch, ReferenceKV
from refface.models.unet import denoise, reference_pass
from refface.models.vq import decode_quantized, encode_unquantized


class NestedGroupNorm(nn.Module):
    """GroupNorm computed with short reductions: means over the width, then the height, then the group's channels.

    The same function as `nn.GroupNorm` (equal-sized rows, so the mean of means is the mean), for export:
    the exporter writes GroupNorm as ONNX InstanceNormalization, whose onnxruntime CPU kernel sums a whole group
    in one float32 pass, 6e-5 to 3e-4 off at the VQGAN's 512 x 512 levels (a million values per group) where
    PyTorch is 1e-6 off. Nested means of at most a few thousand values each keep onnxruntime at PyTorch's level.
    """

    def __init__(self, norm: nn.GroupNorm):
        super().__init__()
        self.num_groups, self.num_channels, self.eps, self.affine = (
            norm.num_groups,
            norm.num_channels,
            norm.eps,
            norm.affine,
        )
        self.weight, self.bias = norm.weight, norm.bias

    @staticmethod
    def _mean(t: torch.Tensor) -> torch.Tensor:
        return t.mean(dim=-1, keepdim=True).mean(dim=-2, keepdim=True).mean(dim=-3, keepdim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        spatial = x if x.ndim == 4 else x[..., None]  # [B, C, H, W]; [B, C, L] as [B, C, L, 1]
        grouped = spatial.reshape(shape[0], self.num_groups, -1, *spatial.shape[2:])  # [B, G, C/G, H, W]
        centred = grouped - self._mean(grouped)
        normed = centred * torch.rsqrt(self._mean(centred * centred) + self.eps)
        normed = normed.reshape(spatial.shape)
        if self.weight is not None:
            extra = (1,) * (normed.ndim - 2)
            normed = normed * self.weight.reshape(1, -1, *extra) + self.bias.reshape(1, -1, *extra)
        return normed.reshape(shape)


def with_nested_group_norms(module: nn.Module) -> nn.Module:
    """A copy of `module` whose GroupNorm layers are `NestedGroupNorm`s sharing their parameters (the module
    itself is left as it is; the copy's other parameters are copies)."""
    clone = copy.deepcopy(module)
    for name, child in list(clone.named_modules()):
        if isinstance(child, nn.GroupNorm):
            parent_name, _, attribute = name.rpartition(".")
            setattr(clone.get_submodule(parent_name) if parent_name else clone, attribute, NestedGroupNorm(child))
    return clone


class VQEncoderGraph(nn.Module):
    """Images in [-1, 1] [B, 3, H, W] -> unquantized latents [B, C, H/f, W/f] (what the denoiser is given)."""

    def __init__(self, vq: VQModel):
        super().__init__()
        self.vq = vq

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return encode_unquantized(self.vq, image)


class VQDecoderGraph(nn.Module):
    """Latents -> images in about [-1, 1]: nearest codebook vector, post_quant_conv, decoder."""

    def __init__(self, vq: VQModel):
        super().__init__()
        self.vq = vq

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return decode_quantized(self.vq, latent)


class UNetReferenceGraph(nn.Module):
    """Reference latents [N, C, h, w] -> every self-attention layer's keys and values (CacheKV's reference pass).

    Outputs, in `layers` order, key then value of each layer, each [1, heads, head_dim, N * tokens].
    """

    def __init__(self, unet: UNet2DModel):
        super().__init__()
        self.unet = unet
        self.layers: list[AttentionLayer] = attention_layers(unet)

    def forward(self, reference_latents: torch.Tensor) -> tuple[torch.Tensor, ...]:
        cache = reference_pass(self.unet, reference_latents)
        outputs: list[torch.Tensor] = []
        for layer in self.layers:
            outputs.append(cache.keys[layer.diffusers_name].transpose(-1, -2))
            outputs.append(cache.values[layer.diffusers_name].transpose(-1, -2))
        return tuple(outputs)


class UNetGraph(nn.Module):
    """One denoiser call with the references' keys/values as inputs -> the predicted noise.

    `sample` is [B, 2C, h, w] (noisy latent and LQ latent on channels), `timesteps` int64 [1] or [B]; each
    key/value [1 or B, heads, head_dim, tokens]: B when the batch items attend to different references
    (guidance's null and reference branches in one call), 1 to share them; tokens may be 0 (no references).
    """

    def __init__(self, unet: UNet2DModel):
        super().__init__()
        self.unet = unet
        self.layers: list[AttentionLayer] = attention_layers(unet)

    def forward(self, sample: torch.Tensor, timesteps: torch.Tensor, *keys_values: torch.Tensor) -> torch.Tensor:
        batch = sample.shape[0]
        keys = {}
        values = {}
        for index, layer in enumerate(self.layers):
            keys[layer.diffusers_name] = keys_values[2 * index].transpose(-1, -2)
            values[layer.diffusers_name] = keys_values[2 * index + 1].transpose(-1, -2)
        # num_references only has to be positive here: zero tokens concatenate to plain self-attention
        context = ReferenceBatch(((batch, ReferenceKV(keys, values, num_references=1)),))
        return denoise(self.unet, sample, timesteps.expand(batch), context)
