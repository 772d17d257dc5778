"""ReF-LDM's VQGAN as a diffusers VQModel, with the encode/decode conventions of the official code.

The official pipeline feeds the *unquantized* encoder output (after quant_conv) to the denoiser,
and quantizes only the final latent before decoding.
"""

from __future__ import annotations

import torch
from diffusers import VQModel

from refface.models.config import VQArchitecture


def build_vqmodel(arch: VQArchitecture) -> VQModel:
    """A randomly initialised VQGAN with the taming-transformers layout described by `arch`."""
    levels = len(arch.ch_mult)
    return VQModel(
        in_channels=arch.in_channels,
        out_channels=arch.out_ch,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=tuple(arch.ch * m for m in arch.ch_mult),
        layers_per_block=arch.num_res_blocks,
        act_fn="silu",
        latent_channels=arch.z_channels,
        sample_size=arch.resolution,
        num_vq_embeddings=arch.n_embed,
        norm_num_groups=32,
        vq_embed_dim=arch.embed_dim,
        scaling_factor=1.0,
        norm_type="group",
        mid_block_add_attention=arch.mid_attention,
    )


def encode_unquantized(vq: VQModel, images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1], [B, 3, H, W] -> latents [B, embed_dim, H/f, W/f] (encoder + quant_conv)."""
    return vq.quant_conv(vq.encoder(images))


def nearest_codes(vq: VQModel, latents: torch.Tensor) -> torch.Tensor:
    """Replace every latent vector by its nearest codebook vector (squared Euclidean distance)."""
    codebook = vq.quantize.embedding.weight
    flat = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
    distances = flat.pow(2).sum(dim=1, keepdim=True) + codebook.pow(2).sum(dim=1)[None, :] - 2 * flat @ codebook.t()
    codes = codebook[distances.argmin(dim=1)]
    # contiguous, not a channels-last view: that layout would follow into the decoder and slow its convolutions
    return codes.view(latents.shape[0], latents.shape[2], latents.shape[3], -1).permute(0, 3, 1, 2).contiguous()


def decode_quantized(vq: VQModel, latents: torch.Tensor) -> torch.Tensor:
    """Latents -> images in about [-1, 1]: quantize, post_quant_conv, decoder (as the official code)."""
    return vq.decoder(vq.post_quant_conv(nearest_codes(vq, latents)))
