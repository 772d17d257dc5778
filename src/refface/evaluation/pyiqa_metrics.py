"""NIQE, MUSIQ and FID through pyiqa, so the numbers are computed exactly as the papers computed them.

pyiqa is optional (a large dependency tree for three metrics). Without it (or when pyiqa cannot fetch
a metric's weights) these metrics are reported as unavailable with the reason. pyiqa keeps its own
weight cache (`~/.cache/torch/hub/pyiqa`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from refface.errors import short_reason
from refface.evaluation.metrics import ImageMetric, Unavailable, to_tensor

NO_REFERENCE = {"niqe": ("niqe", False), "musiq": ("musiq", True)}
"""Our column -> (pyiqa metric name, higher is better)."""

FFHQ_STATISTICS = {"dataset_name": "FFHQ", "dataset_res": 1024, "dataset_split": "trainval70k"}
"""clean-fid's FFHQ statistics, which pyiqa downloads for `fid` without a reference folder."""


def _import_pyiqa():
    try:
        import pyiqa
    except Exception as error:  # ImportError, or torchvision failing to load inside pyiqa's import
        return None, f"pyiqa cannot be imported ({short_reason(error)}); install it with `pip install pyiqa`"
    return pyiqa, None


class PyiqaNoReference(ImageMetric):
    """A no-reference quality score (NIQE lower is better, MUSIQ higher) of the restoration alone."""

    def __init__(self, name: str, model, higher_is_better: bool, device: torch.device | str = "cpu") -> None:
        self.name, self.model, self.higher_is_better, self.device = name, model, higher_is_better, device

    @torch.no_grad()
    def compute(self, preds, gts, refs) -> list[float]:
        return [float(self.model(to_tensor([pred], self.device)).item()) for pred in preds]


def no_reference_metric(name: str, device: torch.device | str = "cpu") -> ImageMetric | Unavailable:
    pyiqa, reason = _import_pyiqa()
    if pyiqa is None:
        return Unavailable(name, reason)
    pyiqa_name, higher = NO_REFERENCE[name]
    try:
        model = pyiqa.create_metric(pyiqa_name, device=torch.device(device))
    except Exception as error:  # pyiqa fetches its weights here; offline it raises whatever urllib raises
        return Unavailable(name, f"pyiqa could not load {pyiqa_name} ({short_reason(error)})")
    return PyiqaNoReference(name, model, higher, device)


def fid(pred_dir: Path, reference_dir: Path | None, device: torch.device | str = "cpu") -> float | Unavailable:
    """FID of a folder of restorations against a folder of real faces, or against clean-fid's FFHQ statistics."""
    pyiqa, reason = _import_pyiqa()
    if pyiqa is None:
        return Unavailable("fid", reason)
    try:
        metric = pyiqa.create_metric("fid", device=torch.device(device))
        if reference_dir is not None:
            return float(metric(str(pred_dir), str(reference_dir)))
        return float(metric(str(pred_dir), **FFHQ_STATISTICS))
    except Exception as error:
        return Unavailable("fid", f"pyiqa could not compute FID ({short_reason(error)})")
