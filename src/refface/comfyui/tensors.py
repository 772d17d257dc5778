"""ComfyUI's image and mask tensors and refface's uint8 arrays.

ComfyUI passes images as float tensors [batch, height, width, channels] in [0, 1] (RGB, sometimes RGBA)
and masks as float tensors [batch, height, width]; refface's workflow works on uint8 RGB arrays.
"""

from __future__ import annotations

import numpy as np
import torch

from refface.errors import RefFaceError


def to_arrays(images: torch.Tensor, what: str = "IMAGE") -> list[np.ndarray]:
    """A ComfyUI IMAGE batch as uint8 RGB arrays (an alpha channel is dropped), or one sentence on its shape."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise RefFaceError(f"The {what} input must be a ComfyUI image batch [batch, height, width, 3], got {shape}.")
    pixels = images.detach().float().cpu().clamp(0, 1)
    if pixels.shape[-1] == 1:
        pixels = pixels.expand(*pixels.shape[:-1], 3)
    pixels = (pixels[..., :3] * 255).round().to(torch.uint8).numpy()
    return list(pixels)


def to_image(arrays: list[np.ndarray]) -> torch.Tensor:
    """uint8 RGB arrays of one size as a ComfyUI IMAGE batch."""
    return torch.from_numpy(np.stack(arrays)).float() / 255.0


def to_mask(masks: list[np.ndarray]) -> torch.Tensor:
    """float [height, width] masks in [0, 1] as a ComfyUI MASK batch."""
    return torch.from_numpy(np.stack(masks).astype(np.float32))
