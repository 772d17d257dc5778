"""The per-image metrics of the papers' tables, behind one interface, each honest about what it needs.

A metric scores a batch of restorations (uint8 H x W x 3) against their ground truth and, for
IDS(REF), their first reference. Metrics that need downloaded weights are built by `build_metrics`
only when the weights can be had; otherwise the metric is reported `Unavailable` with the
reason, never as a zero.

Conventions (documented because papers differ):
- `psnr`: RGB, uint8 range 255, mean over all pixels and channels (no Y channel, no border crop).
- `ssim`: RGB mean of per-channel SSIM with an 11x11 Gaussian window (sigma 1.5), K1 0.01, K2 0.03,
  statistics over the valid region; equal to scikit-image's `structural_similarity(...,
  gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255, channel_axis=2)`.
- `ids` / `ids_ref`: cosine similarity of ArcFace embeddings (the official 112x112 preprocessing) of
  the restoration and the GT / the first reference, as ReF-LDM's evaluation computes IDS.
- `ids_facenet`: the same with FaceNet (Inception-ResNet-v1, facenet-pytorch's VGGFace2 weights) on the
  face square of the aligned crop at 160 px, the Composite-Context paper's second identity model.
- `ids_dlib`: the same with dlib's face descriptor (offline, ships with the package); a second,
  independently trained identity model, so a method tuned against ArcFace cannot game both.
- `lpips`: LPIPS-VGG v0.1 (the weights pyiqa's `lpips-vgg` and the `lpips` package use), inputs in [-1, 1].
- `flpips`: LPIPS on the face only: outside the face region of the GT, the restoration is replaced by
  the GT, so only differences inside the face count. The region is the convex hull of the GT's
  68 dlib landmarks (jaw line and eyebrows raised by 15 % of the face height to include the
  forehead), feathered by 2 % of the width; without a detectable face the whole image is used and
  the case is flagged.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from kornia.metrics import ssim as kornia_ssim

__all__ = ["ImageMetric", "PSNR", "SSIM", "Unavailable", "to_tensor"]


@dataclass(frozen=True)
class Unavailable:
    """A metric that cannot be computed here, and the one-sentence reason."""

    name: str
    reason: str


class ImageMetric(ABC):
    """A per-image score of restorations against GT (and references); batched for the GPU."""

    name: ClassVar[str]
    higher_is_better: ClassVar[bool]
    needs_refs: ClassVar[bool] = False

    @abstractmethod
    def compute(
        self, preds: Sequence[np.ndarray], gts: Sequence[np.ndarray], refs: Sequence[np.ndarray | None]
    ) -> list[float]:
        """One score per case; images are uint8 H x W x 3, a pred and its GT of the same size."""


def to_tensor(images: Sequence[np.ndarray], device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 H x W x 3 images of one size -> float [B, 3, H, W] in [0, 1]."""
    stacked = torch.from_numpy(np.stack([np.ascontiguousarray(image) for image in images]))
    return stacked.to(device).permute(0, 3, 1, 2).float() / 255.0


class PSNR(ImageMetric):
    name = "psnr"
    higher_is_better = True

    def compute(self, preds, gts, refs) -> list[float]:
        scores = []
        for pred, gt in zip(preds, gts, strict=True):
            mse = float(np.mean((pred.astype(np.float64) - gt.astype(np.float64)) ** 2))
            scores.append(float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse))
        return scores


class SSIM(ImageMetric):
    name = "ssim"
    higher_is_better = True

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = device

    def compute(self, preds, gts, refs) -> list[float]:
        # float64: the statistics of 512 x 512 images lose digits in float32 against the reference
        pred, gt = (to_tensor(x, self.device).double() for x in (preds, gts))
        scores = kornia_ssim(pred, gt, window_size=11, max_val=1.0, padding="valid")
        return scores.mean(dim=(1, 2, 3)).tolist()
