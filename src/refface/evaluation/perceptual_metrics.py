"""LPIPS on the whole image and on the face region only (fLPIPS)."""

from __future__ import annotations

import torch
from torch import nn

from refface.evaluation.face_region import FaceRegionFinder, face_only
from refface.evaluation.metrics import ImageMetric, to_tensor


class LPIPSDistance(ImageMetric):
    """LPIPS-VGG (v0.1 weights) between restoration and GT; lower is better."""

    name = "lpips"
    higher_is_better = False

    def __init__(self, lpips: nn.Module, device: torch.device | str = "cpu") -> None:
        self.lpips, self.device = lpips.to(device).eval(), device

    @torch.no_grad()
    def distances(self, preds, gts) -> list[float]:
        pred, gt = (to_tensor(x, self.device) * 2 - 1 for x in (preds, gts))
        return self.lpips(pred, gt).float().cpu().tolist()

    def compute(self, preds, gts, refs) -> list[float]:
        return self.distances(preds, gts)


class FaceLPIPSDistance(LPIPSDistance):
    """LPIPS with the restoration replaced by the GT outside the GT's face region (see `face_region`)."""

    name = "flpips"

    def __init__(self, lpips: nn.Module, device: torch.device | str = "cpu", finder: FaceRegionFinder | None = None):
        super().__init__(lpips, device)
        self.finder = finder or FaceRegionFinder()

    def compute(self, preds, gts, refs) -> list[float]:
        masks = [self.finder(gt).mask for gt in gts]
        blended = [face_only(pred, gt, mask) for pred, gt, mask in zip(preds, gts, masks, strict=True)]
        return self.distances(blended, gts)
