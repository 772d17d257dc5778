"""The interface every way of integrating references implements: `ReferenceDenoiser`.

A `ReferenceDenoiser` is an `nn.Module` that owns the U-Net (and any extra layers the integration needs),
so one `forward` call covers the reference encoding and the noise prediction. That matters for distributed
training, where DDP only synchronises gradients of computations run through the wrapped module's `forward`.
CacheKV lives in `refface.models.reference_integration` (with the registry of all integrations), the
paper's ablation alternatives in `refface.models.reference_ablations`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
from diffusers import UNet2DModel
from torch import nn

from refface.errors import RefFaceError
from refface.models.config import UNetArchitecture


class ReferenceDenoiser(nn.Module, ABC):
    """A U-Net predicting noise from [noisy latent, LQ latent] plus reference latents [B, N, C, h, w].

    N may be 0 (LQ-only restoration). Reference latents of an item that are all zero are the null
    condition of classifier-free guidance, as dropped conditions are in training.
    """

    name: ClassVar[str]

    def __init__(self, unet: UNet2DModel, num_refs: int):
        super().__init__()
        self.unet = unet
        self.num_refs = num_refs

    @classmethod
    @abstractmethod
    def build(cls, arch: UNetArchitecture, num_refs: int) -> ReferenceDenoiser:
        """A randomly initialised denoiser of this kind for `num_refs` references."""

    @property
    def latent_channels(self) -> int:
        return int(self.unet.config.out_channels)

    @abstractmethod
    def encode_references(self, refs: torch.Tensor) -> Any:
        """The per-batch reference context (differentiable; None when there are no references)."""

    @abstractmethod
    def predict(self, noisy: torch.Tensor, lq: torch.Tensor, context: Any, timesteps: torch.Tensor) -> torch.Tensor:
        """Predicted noise [B, C, h, w] for one denoising step."""

    def forward(
        self, noisy: torch.Tensor, lq: torch.Tensor, refs: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        return self.predict(noisy, lq, self.encode_references(refs), timesteps)

    def check_references(self, refs: torch.Tensor) -> None:
        if refs.ndim != 5 or refs.shape[2] != self.latent_channels:
            raise RefFaceError(
                f"Reference latents must be [batch, refs, {self.latent_channels}, h, w]; got {tuple(refs.shape)}."
            )
