"""The Composite-Context method's networks: reference tokens from ArcFace and FaRL, fed to a U-Net's cross-attention.

    c = Concat[W_H ArcFace(x_ref) (1 token), W_G FaRL(x_ref) (197 tokens)] + sinusoidal positions

The two encoders are frozen; W_H, W_G and the U-Net are trained. Each component can be dropped per
item (classifier-free guidance trains the model without the LQ latent, the identity token or the
appearance tokens, independently) through the cross-attention mask. One choice is made here that the
paper does not state: the context starts with a learned "null" token that is never masked, because
attention over an empty set is undefined; with every component dropped the U-Net attends to the null
token alone, and dropping a component gives exactly the result of leaving its tokens out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from diffusers import ModelMixin, UNet2DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from torch import nn
from transformers import CLIPVisionModel

from refface.errors import RefFaceError
from refface.models.farl import farl_pixels
from refface.models.iresnet import EMBEDDING_SIZE, ArcFaceEmbedder, iresnet


@dataclass
class ReferenceFeatures:
    """What the frozen encoders say about N reference photos: identity [N, 512] and appearance tokens [N, T, D]."""

    identity: torch.Tensor
    facial: torch.Tensor

    def __len__(self) -> int:
        return self.identity.shape[0]

    def take(self, index: torch.Tensor | list[int]) -> ReferenceFeatures:
        """The features of the references at `index` (repeats allowed), e.g. one per batch item."""
        index = torch.as_tensor(index, device=self.identity.device, dtype=torch.long)
        return ReferenceFeatures(self.identity[index], self.facial[index.to(self.facial.device)])

    @staticmethod
    def cat(parts: list[ReferenceFeatures]) -> ReferenceFeatures:
        return ReferenceFeatures(torch.cat([p.identity for p in parts]), torch.cat([p.facial for p in parts]))

    def zeros(self, count: int) -> ReferenceFeatures:
        """`count` all-zero feature rows: placeholders for items whose context is dropped anyway."""
        return ReferenceFeatures(
            self.identity.new_zeros(count, *self.identity.shape[1:]),
            self.facial.new_zeros(count, *self.facial.shape[1:]),
        )


class IdentityEncoder(ModelMixin, ConfigMixin):
    """A frozen ArcFace IResNet as a pipeline component (saved and loaded with the pipeline's other parts)."""

    @register_to_config
    def __init__(self, layers: tuple[int, ...] = (3, 4, 14, 3)) -> None:
        super().__init__()
        self.embedder = ArcFaceEmbedder(iresnet(list(layers)))

    @classmethod
    def from_embedder(cls, embedder: ArcFaceEmbedder) -> IdentityEncoder:
        encoder = cls(layers=tuple(embedder.layers))
        encoder.embedder.load_state_dict(embedder.state_dict())
        return encoder.eval().requires_grad_(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """[-1, 1] face crops -> L2-normalised [B, 512] identity embeddings (ReF-LDM's ArcFace preprocessing)."""
        return self.embedder(images).float()


def sinusoidal_positions(count: int, dim: int) -> torch.Tensor:
    """The Transformer's fixed positional encoding [count, dim]: sin on even channels, cos on odd ones."""
    position = torch.arange(count, dtype=torch.float64)[:, None]
    frequency = torch.exp(torch.arange(0, dim, 2, dtype=torch.float64) * (-math.log(10000.0) / dim))
    table = torch.zeros(count, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency[: dim // 2])
    return table.float()


class CompositeContext(ModelMixin, ConfigMixin):
    """W_H and W_G (the trained projections) and the layout of the context tokens: [null, identity, facial...]."""

    @register_to_config
    def __init__(
        self,
        identity_dim: int = EMBEDDING_SIZE,
        facial_dim: int = 768,
        facial_tokens: int = 197,
        context_dim: int = 1024,
    ) -> None:
        super().__init__()
        self.identity_proj = nn.Linear(identity_dim, context_dim)  # W_H
        self.facial_proj = nn.Linear(facial_dim, context_dim)  # W_G
        self.null_token = nn.Parameter(torch.zeros(1, 1, context_dim))
        self.register_buffer("positions", sinusoidal_positions(2 + facial_tokens, context_dim), persistent=False)

    @property
    def num_tokens(self) -> int:
        return 2 + int(self.config.facial_tokens)

    def forward(
        self,
        features: ReferenceFeatures,
        keep_identity: torch.Tensor | None = None,
        keep_facial: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Context tokens [B, 2 + T, D] and their attention mask [B, 2 + T] (True = attended).

        Dropped components are masked out and their tokens zeroed, so a dropped context carries nothing
        about the reference it came from.
        """
        batch = len(features)
        if features.facial.shape[1] != self.config.facial_tokens:
            raise RefFaceError(
                f"The appearance encoder gave {features.facial.shape[1]} tokens, but this context expects "
                f"{self.config.facial_tokens}; the encoder and the trained projection do not belong together."
            )
        dtype = self.identity_proj.weight.dtype
        identity = self.identity_proj(features.identity.to(dtype))[:, None]
        facial = self.facial_proj(features.facial.to(dtype))
        null = self.null_token.expand(batch, 1, -1)
        tokens = torch.cat([null, identity, facial], dim=1) + self.positions.to(dtype)
        mask = torch.ones(batch, self.num_tokens, dtype=torch.bool, device=tokens.device)
        if keep_identity is not None:
            mask[:, 1] = keep_identity.to(tokens.device, torch.bool)
        if keep_facial is not None:
            mask[:, 2:] = keep_facial.to(tokens.device, torch.bool)[:, None]
        return tokens * mask[..., None].to(dtype), mask


class CompositeDenoiser(nn.Module):
    """The trained part of the method: the U-Net (noisy latent + LQ latent on channels) and the context projections."""

    def __init__(self, unet: UNet2DConditionModel, context: CompositeContext) -> None:
        super().__init__()
        if unet.config.cross_attention_dim != context.config.context_dim:
            raise RefFaceError(
                f"The U-Net's cross-attention width ({unet.config.cross_attention_dim}) differs from the context "
                f"width ({context.config.context_dim})."
            )
        self.unet = unet
        self.context = context

    @property
    def latent_channels(self) -> int:
        return int(self.unet.config.out_channels)

    def forward(
        self,
        noisy: torch.Tensor,
        lq: torch.Tensor,
        features: ReferenceFeatures,
        timesteps: torch.Tensor,
        keep_lq: torch.Tensor | None = None,
        keep_identity: torch.Tensor | None = None,
        keep_facial: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The U-Net's prediction (eps or v, as the scheduler says) for [B] items; `keep_*` drop conditions per item."""
        if keep_lq is not None:
            lq = lq * keep_lq.to(lq).view(-1, 1, 1, 1)
        tokens, mask = self.context(features, keep_identity, keep_facial)
        dtype = self.unet.dtype
        sample = torch.cat([noisy, lq], dim=1).to(dtype)
        return self.unet(sample, timesteps, encoder_hidden_states=tokens.to(dtype), encoder_attention_mask=mask).sample


@torch.no_grad()
def encode_reference_features(
    identity_encoder: IdentityEncoder, facial_encoder: CLIPVisionModel, images: torch.Tensor
) -> ReferenceFeatures:
    """ArcFace embeddings and all FaRL output tokens of [N, 3, S, S] reference crops in [-1, 1]."""
    size = int(facial_encoder.config.image_size)
    dtype = next(facial_encoder.parameters()).dtype
    identity = identity_encoder(images.to(next(identity_encoder.parameters()).dtype))
    facial = facial_encoder(pixel_values=farl_pixels(images, size).to(dtype)).last_hidden_state
    return ReferenceFeatures(identity.float(), facial.float())


def widen_input(unet: UNet2DConditionModel, extra_channels: int) -> UNet2DConditionModel:
    """Add `extra_channels` input channels (the LQ latent) to a text-to-image U-Net; their weights start at zero.

    At initialisation the widened U-Net therefore computes exactly what the text-to-image U-Net did.
    """
    old = unet.conv_in
    new = nn.Conv2d(
        old.in_channels + extra_channels,
        old.out_channels,
        old.kernel_size,
        old.stride,
        old.padding,
        device=old.weight.device,
        dtype=old.weight.dtype,
    )
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, : old.in_channels] = old.weight
        new.bias.copy_(old.bias)
    unet.conv_in = new
    unet.register_to_config(in_channels=old.in_channels + extra_channels)
    return unet
