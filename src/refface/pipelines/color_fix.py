"""AdaIN colour correction: give a restoration the per-channel colour statistics of its LQ input.

Diffusion restorers drift in global colour (a face turns slightly green or pale) while the LQ photo,
however blurred, still has the right mean colour and contrast; matching each RGB channel's mean and
standard deviation to the LQ image's removes the drift without touching the restored detail.
"""

from __future__ import annotations

import torch

from refface.errors import RefFaceError


def adain_color_fix(image: torch.Tensor, reference: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """[B, C, H, W] images in [0, 1] with each channel's mean and std moved to those of `reference` [B, C, h, w]."""
    if image.ndim != 4 or reference.ndim != 4 or image.shape[:2] != reference.shape[:2]:
        raise RefFaceError(
            f"The colour fix needs [B, C, H, W] images with the same batch and channels, got {tuple(image.shape)} "
            f"and {tuple(reference.shape)}."
        )
    image, reference = image.float(), reference.float()
    mean, std = image.mean(dim=(2, 3), keepdim=True), image.std(dim=(2, 3), keepdim=True)
    target_mean, target_std = reference.mean(dim=(2, 3), keepdim=True), reference.std(dim=(2, 3), keepdim=True)
    return ((image - mean) / (std + eps) * target_std + target_mean).clamp(0.0, 1.0)
