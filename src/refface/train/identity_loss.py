"""ReF-LDM's timestep-scaled identity loss, added to the LDM noise-prediction loss during training.

    L = L_LDM + scale * w(t) * (1 - cos(ArcFace(D(x0_hat)), ArcFace(x_HQ))),   scale = 0.1,  w(t) = sqrt(alpha_bar_t)

x0_hat is the one-step clean-latent estimate from the predicted noise and D the VQ decoder. Far from t = 0 that
estimate is a blur, so the paper scales the loss down there instead of pushing identity into noise; the ablation
weightings (none, unscaled, t < 100, t < 500) are selectable by name. The Composite-Context method's "hard-example"
variant mixes in the distance to a reference photo: (1 - lambda) * L_ID(x_HQ) + lambda * L_ID(x_ref).

The official IdentityLoss module is not public, so two details are choices made here:

* `quantize=True` (default) decodes x0_hat as inference decodes the final latent, snapped to the nearest codebook
  vectors, with a straight-through gradient (the forward pass uses the codes, the backward pass treats the snap as
  the identity) so that the U-Net still gets a gradient; `quantize=False` decodes the raw latent.
* The decoded image is not clamped to [-1, 1] before ArcFace, so saturated pixels still pass gradients.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import AutoencoderKL, VQModel
from torch import nn

from refface.errors import RefFaceError
from refface.face.arcface import ArcFaceEmbedder, cosine_similarity
from refface.models.kl import decode_latents
from refface.models.vq import nearest_codes
from refface.pipelines.schedule import official_betas

IDENTITY_WEIGHTINGS = ("scaled", "unscaled", "t<100", "t<500", "none")
IDENTITY_SCALE = 0.1
HARD_EXAMPLE_LAMBDA = 0.6  # the Composite-Context method's weight of the reference term
_THRESHOLDS = {"t<100": 100, "t<500": 500}


def official_alphas_cumprod(
    num_train_timesteps: int = 1000, linear_start: float = 0.0015, linear_end: float = 0.0155
) -> torch.Tensor:
    """alpha_bar_t of the ReF-LDM schedule in float64, as the official code computes it (CPU tensor, [T])."""
    betas = official_betas(num_train_timesteps, linear_start, linear_end)
    return torch.from_numpy(np.cumprod(1.0 - betas))


def _check_weighting(weighting: str) -> None:
    if weighting not in IDENTITY_WEIGHTINGS:
        raise RefFaceError(
            f"Unknown identity-loss weighting {weighting!r}; choose one of {', '.join(IDENTITY_WEIGHTINGS)}."
        )


def _alpha_bar(timesteps: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """alphas_cumprod[t], indexed where the table lives (float64 tables may live on the CPU only)."""
    if not isinstance(timesteps, torch.Tensor) or timesteps.is_floating_point() or timesteps.is_complex():
        raise RefFaceError("Diffusion timesteps must be an integer tensor.")
    table = torch.as_tensor(alphas_cumprod)
    if table.ndim != 1 or not table.is_floating_point():
        raise RefFaceError(f"alphas_cumprod must be a 1-D float tensor, got shape {tuple(table.shape)}.")
    steps = timesteps.to(table.device)
    if steps.numel() and bool(((steps < 0) | (steps >= table.numel())).any()):
        low, high = int(steps.min()), int(steps.max())
        raise RefFaceError(f"Timesteps must lie in [0, {table.numel() - 1}], got {low}..{high}.")
    return table[steps]


def identity_weight(timesteps: torch.Tensor, alphas_cumprod: torch.Tensor, weighting: str) -> torch.Tensor:
    """w(t) per sample, in the dtype of `alphas_cumprod` on the device of `timesteps`.

    'scaled' is sqrt(alpha_bar_t) (the paper's choice); 'unscaled' is 1; 't<100'/'t<500' are indicators; 'none' is 0.
    """
    _check_weighting(weighting)
    alpha_bar = _alpha_bar(timesteps, alphas_cumprod)
    if weighting == "scaled":
        weights = alpha_bar.sqrt()
    elif weighting == "unscaled":
        weights = torch.ones_like(alpha_bar)
    elif weighting == "none":
        weights = torch.zeros_like(alpha_bar)
    else:
        weights = (timesteps.to(alpha_bar.device) < _THRESHOLDS[weighting]).to(alpha_bar.dtype)
    return weights.to(timesteps.device)


def predict_x0(
    noisy: torch.Tensor, eps: torch.Tensor, timesteps: torch.Tensor, alphas_cumprod: torch.Tensor
) -> torch.Tensor:
    """The one-step clean estimate x0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t).

    Computed as the official code does, x_t / sqrt(alpha_bar) - sqrt(1 / alpha_bar - 1) eps, with the coefficients in
    float64 and the result in at least float32 (at t = 999 they are ~14 and ~14: low precision would amplify noise).
    """
    if noisy.shape != eps.shape or noisy.ndim < 1:
        raise RefFaceError(f"The noisy latents {tuple(noisy.shape)} and noise {tuple(eps.shape)} must match.")
    alpha_bar = _alpha_bar(timesteps, alphas_cumprod).to(torch.float64)
    if alpha_bar.ndim > 1 or alpha_bar.numel() not in (1, noisy.shape[0]):
        raise RefFaceError(f"Expected one timestep per sample ({noisy.shape[0]}), got shape {tuple(timesteps.shape)}.")
    dtype = torch.promote_types(torch.promote_types(noisy.dtype, eps.dtype), torch.float32)
    shape = (-1,) + (1,) * (noisy.ndim - 1)
    signal = alpha_bar.rsqrt().to(dtype).to(noisy.device).view(shape)
    noise = (1.0 / alpha_bar - 1.0).sqrt().to(dtype).to(noisy.device).view(shape)
    return noisy.to(dtype) * signal - eps.to(dtype) * noise


class _StraightThrough(torch.autograd.Function):
    """Forward: the codebook vectors exactly. Backward: the gradient goes to the unquantized latent unchanged."""

    @staticmethod
    def forward(ctx, latents: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        return codes.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


@dataclass
class IdentityLossOutput:
    """The loss to add to L_LDM, and what went into it (detached, float32) for logging."""

    loss: torch.Tensor  # scalar: scale * mean over the batch of w(t) * per_sample
    per_sample: torch.Tensor  # [B] unscaled 1 - cos (the hard-example mix with references); 0 where not measured
    weights: torch.Tensor  # [B] w(t)
    measured: torch.Tensor  # [B] bool: samples that were decoded and embedded (those with w(t) > 0)


class IdentityLoss(nn.Module):
    """ArcFace distance between the decoded one-step x0 estimate and the target face, weighted per timestep.

    The VQ model and ArcFace are frozen here (requires_grad False, eval mode even under `.train()`); gradients flow
    only to `eps_pred`, hence to the U-Net. Samples with w(t) = 0 are not decoded at all, and a batch with no
    positive weight (e.g. every t >= 500 under 't<500', or 'none') costs nothing but returns a zero loss that is
    still attached to `eps_pred`'s graph.
    """

    def __init__(
        self,
        vq: VQModel | AutoencoderKL,
        arcface: ArcFaceEmbedder,
        alphas_cumprod: torch.Tensor | np.ndarray,
        weighting: str = "scaled",
        scale: float = IDENTITY_SCALE,
        quantize: bool = True,
        hard_example_lambda: float | None = None,
    ) -> None:
        super().__init__()
        _check_weighting(weighting)
        if not math.isfinite(scale) or scale < 0:
            raise RefFaceError(f"The identity-loss scale must be a finite number >= 0, got {scale}.")
        if hard_example_lambda is not None and not 0.0 <= hard_example_lambda <= 1.0:
            raise RefFaceError(f"The hard-example lambda must lie in [0, 1], got {hard_example_lambda}.")
        table = torch.as_tensor(alphas_cumprod).detach().to("cpu", torch.float64).clone()
        if table.ndim != 1 or table.numel() == 0 or bool(((table <= 0) | (table > 1)).any()):
            raise RefFaceError("alphas_cumprod must be a non-empty 1-D tensor of values in (0, 1].")
        self.vq = vq.requires_grad_(False)
        self.arcface = arcface.requires_grad_(False)
        # A plain attribute, not a buffer: `.to(dtype)` on the module must not round the float64 table.
        self.alphas_cumprod = table
        self.weighting = weighting
        self.scale = float(scale)
        self.quantize = quantize
        self.hard_example_lambda = hard_example_lambda
        self.train(False)

    def train(self, mode: bool = True) -> IdentityLoss:
        """The frozen networks stay in eval mode whatever mode the training loop sets."""
        super().train(mode)
        self.vq.eval()
        self.arcface.eval()
        return self

    def extra_repr(self) -> str:
        return (
            f"weighting={self.weighting!r}, scale={self.scale}, quantize={self.quantize}, "
            f"hard_example_lambda={self.hard_example_lambda}"
        )

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """x0 latents -> images in about [-1, 1], quantized straight-through when `quantize` is set.

        A KL autoencoder (the Composite-Context method's) has no codebook: its latents are decoded as they are.
        """
        if isinstance(self.vq, AutoencoderKL):
            return decode_latents(self.vq, latents)
        latents = latents.to(self.vq.post_quant_conv.weight.dtype)
        if self.quantize:
            with torch.no_grad():  # one sample at a time: the distance matrix is [h * w, codebook size]
                codes = torch.cat([nearest_codes(self.vq, latent[None]) for latent in latents])
            latents = _StraightThrough.apply(latents, codes)
        return self.vq.decoder(self.vq.post_quant_conv(latents))

    def distance(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Per-pair 1 - cos of ArcFace embeddings in float32; the targets are constants (no graph kept)."""
        embeddings = self.arcface(images).float()
        with torch.no_grad():
            target_embeddings = self.arcface(targets.to(images.device)).float()
        return 1.0 - cosine_similarity(embeddings, target_embeddings)

    def forward(
        self,
        noisy_latent: torch.Tensor,
        eps_pred: torch.Tensor,
        timesteps: torch.Tensor,
        hq_images: torch.Tensor,
        ref_images: torch.Tensor | None = None,
    ) -> IdentityLossOutput:
        """The identity loss of a batch: latents [B, C, h, w], timesteps [B], images [B, 3, H, W] in [-1, 1].

        `ref_images` (one reference per sample) is required exactly when the loss has a `hard_example_lambda`.
        """
        batch = self._check_inputs(noisy_latent, eps_pred, timesteps, hq_images, ref_images)
        timesteps = timesteps.expand(batch) if timesteps.ndim == 0 else timesteps
        device = eps_pred.device
        weights = identity_weight(timesteps.cpu(), self.alphas_cumprod, self.weighting).float()
        measured = weights > 0 if self.scale > 0 else torch.zeros(batch, dtype=torch.bool)
        per_sample = torch.zeros(batch, dtype=torch.float32, device=device)
        weights, measured_out = weights.to(device), measured.to(device)
        if not bool(measured.any()):
            zero = eps_pred.float().sum() * 0.0  # attached to the graph, so backward() on a sum of losses works
            return IdentityLossOutput(zero, per_sample, weights, measured_out)

        index = measured.nonzero().squeeze(1).to(device)
        x0 = predict_x0(noisy_latent[index], eps_pred[index], timesteps.to(device)[index], self.alphas_cumprod)
        images = self.decode(x0)
        distance = self.distance(images, hq_images[index])
        if self.hard_example_lambda is not None:
            mix = self.hard_example_lambda
            distance = (1.0 - mix) * distance + mix * self.distance(images, ref_images[index])
        per_sample = per_sample.index_copy(0, index, distance)
        loss = self.scale * (weights * per_sample).mean()
        return IdentityLossOutput(loss, per_sample.detach(), weights, measured_out)

    def _check_inputs(
        self,
        noisy: torch.Tensor,
        eps: torch.Tensor,
        timesteps: torch.Tensor,
        hq_images: torch.Tensor,
        ref_images: torch.Tensor | None,
    ) -> int:
        """The batch size, after checking that every input agrees with it (mistakes here would broadcast silently)."""
        if noisy.ndim != 4 or noisy.shape != eps.shape:
            raise RefFaceError(
                f"The noisy latents {tuple(noisy.shape)} and predicted noise {tuple(eps.shape)} must be equal "
                "[B, C, h, w] tensors."
            )
        batch = noisy.shape[0]
        if not (timesteps.ndim == 0 or (timesteps.ndim == 1 and len(timesteps) == batch)):
            raise RefFaceError(f"Expected {batch} timesteps, got a tensor of shape {tuple(timesteps.shape)}.")
        named = [("HQ images", hq_images)]
        if self.hard_example_lambda is None and ref_images is not None:
            raise RefFaceError("Reference images were given, but this identity loss has no hard_example_lambda.")
        if self.hard_example_lambda is not None:
            if ref_images is None:
                raise RefFaceError("The hard-example identity loss needs one reference image per sample.")
            named.append(("reference images", ref_images))
        for name, images in named:
            if images.ndim != 4 or images.shape[0] != batch or images.shape[1] != 3:
                raise RefFaceError(f"Expected {batch} {name} as [B, 3, H, W], got shape {tuple(images.shape)}.")
        return batch
