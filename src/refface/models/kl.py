"""Latents of a KL autoencoder (Stable Diffusion's VAE), scaled as its diffusion model was trained on them."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL


@torch.no_grad()
def encode_latents(vae: AutoencoderKL, images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] images -> scaled latents (the posterior's mode: the same photo always gives the same latent)."""
    dtype = next(vae.parameters()).dtype
    return vae.encode(images.to(dtype)).latent_dist.mode() * vae.config.scaling_factor


def decode_latents(vae: AutoencoderKL, latents: torch.Tensor) -> torch.Tensor:
    """Scaled latents -> images in about [-1, 1] (differentiable: the identity loss decodes through it)."""
    dtype = next(vae.parameters()).dtype
    return vae.decode(latents.to(dtype) / vae.config.scaling_factor).sample
