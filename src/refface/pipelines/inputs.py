"""Turning what a caller passes (PIL images or tensors) into the batch a restoration pipeline works on."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image

from refface.errors import RefFaceError
from refface.imaging import to_model_input

ImageInput = Image.Image | torch.Tensor


def prepare_images(
    images: Sequence[ImageInput] | torch.Tensor, size: int, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """PIL images (resized to `size`) or [-1, 1] tensors of that size -> a [B, 3, size, size] batch."""
    if isinstance(images, torch.Tensor):
        batch = images if images.ndim == 4 else images[None]
        if batch.shape[-2:] != (size, size):
            raise RefFaceError(f"Image tensors must be {size}x{size}; got {tuple(batch.shape[-2:])}.")
    elif any(isinstance(image, torch.Tensor) for image in images):
        batch = torch.stack([prepare_images(image, size, torch.device("cpu"), torch.float32)[0] for image in images])
    else:
        batch = to_model_input(images, size)
    return batch.to(device=device, dtype=dtype)
