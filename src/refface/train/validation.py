"""The held-out validation pass: sample grids (LQ | references | output | GT) and their metrics.

PSNR is always measured. Identity similarity (ArcFace) and LPIPS need weights; they are measured
when the weights are already in use by the run or already in the user cache, and never downloaded
just for validation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from refface.imaging import save_image
from refface.train.stage import SampleRows
from refface.weights import cache_dir


def grid_image(rows: SampleRows) -> Image.Image:
    """One row per case: LQ, each reference, output, GT; all [-1, 1] images of the same size."""
    tiles = []
    for item in range(rows.gt.shape[0]):
        row = [rows.lq[item], *rows.refs[item].unbind(0), rows.output[item], rows.gt[item]]
        tiles.append(torch.cat([tile.float().cpu() for tile in row], dim=-1))
    grid = torch.cat(tiles, dim=-2)
    pixels = ((grid.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(np.ascontiguousarray(pixels))


def save_grid(rows: SampleRows, path: Path) -> Path:
    return save_image(grid_image(rows), path)


def psnr(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of [-1, 1] images measured on the [0, 1] scale."""
    error = ((output.float().clamp(-1, 1) - target.float()) / 2).square().flatten(1).mean(1)
    return 10 * torch.log10(1.0 / error.clamp_min(1e-10))


def cached_arcface() -> nn.Module | None:
    """The default ArcFace if its weights are already downloaded, else None (validation never downloads)."""
    from refface.face.arcface import ARCFACE_R50_WEIGHTS, load_arcface

    path = cache_dir() / ARCFACE_R50_WEIGHTS.name
    return load_arcface(path) if path.is_file() else None


@torch.no_grad()
def validation_metrics(
    rows: SampleRows, arcface: nn.Module | None = None, lpips: nn.Module | None = None
) -> dict[str, float]:
    """Mean PSNR, and identity similarity to the GT / LPIPS when those models are given."""
    metrics = {"val_psnr": float(psnr(rows.output, rows.gt).mean())}
    if arcface is not None:
        device = next(arcface.parameters()).device
        similarity = arcface.similarity(rows.output.to(device).clamp(-1, 1), rows.gt.to(device))
        metrics["val_identity"] = float(similarity.mean())
    if lpips is not None:
        device = next(lpips.parameters()).device
        metrics["val_lpips"] = float(lpips(rows.output.to(device).clamp(-1, 1), rows.gt.to(device)).mean())
    return metrics
