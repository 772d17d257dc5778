"""Build the requested metrics, or say why one cannot be built here (missing weights, no pyiqa, no references)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from refface.errors import RefFaceError
from refface.evaluation.metrics import PSNR, SSIM, ImageMetric, Unavailable
from refface.weights import WeightFile, cache_dir


def _weights_reason(files: Sequence[WeightFile], download: bool) -> str | None:
    """None when the weights are cached (or may be downloaded), else why the metric cannot run."""
    if download:
        return None
    absent = [f.name for f in files if not (cache_dir() / f.name).is_file()]
    if not absent:
        return None
    return f"its weights ({', '.join(absent)}) are not in {cache_dir()} and downloads are off"


def _arcface(weights: str | Path | None, download: bool):
    from refface.face.arcface import ARCFACE_R50_WEIGHTS, default_arcface, load_arcface

    if weights is not None:
        return load_arcface(weights)
    reason = _weights_reason([ARCFACE_R50_WEIGHTS], download)
    if reason:
        raise RefFaceError(reason + " (or pass --arcface-weights FILE)")
    return default_arcface()


def _facenet(download: bool):
    from refface.face.facenet import FACENET_WEIGHTS, default_facenet

    reason = _weights_reason([FACENET_WEIGHTS], download)
    if reason:
        raise RefFaceError(reason)
    return default_facenet()


def _lpips(download: bool):
    from refface.models.lpips import LPIPS_VGG_WEIGHTS, VGG16_WEIGHTS, default_lpips

    reason = _weights_reason([VGG16_WEIGHTS, LPIPS_VGG_WEIGHTS], download)
    if reason:
        raise RefFaceError(reason)
    return default_lpips()


def build_metrics(
    names: Sequence[str],
    device: str | torch.device,
    download: bool,
    arcface_weights: str | Path | None,
    has_refs: bool,
) -> tuple[list[ImageMetric], dict[str, str]]:
    """The metrics that can run here, in the order asked, and {name: reason} for the others."""
    built: list[ImageMetric] = []
    unavailable: dict[str, str] = {}
    arcface = lpips = None
    for name in names:
        try:
            if name == "psnr":
                built.append(PSNR())
            elif name == "ssim":
                built.append(SSIM(device))
            elif name == "ids_dlib":
                from refface.evaluation.identity_metrics import DlibSimilarity

                built.append(DlibSimilarity())
            elif name in ("ids", "ids_ref"):
                if name == "ids_ref" and not has_refs:
                    raise RefFaceError("it needs the references: pass --refs CSV")
                from refface.evaluation.identity_metrics import ArcFaceSimilarity

                arcface = arcface or _arcface(arcface_weights, download)
                built.append(ArcFaceSimilarity(arcface, "gt" if name == "ids" else "ref", device))
            elif name == "ids_facenet":
                from refface.evaluation.identity_metrics import FaceNetSimilarity

                built.append(FaceNetSimilarity(_facenet(download), device))
            elif name in ("lpips", "flpips"):
                from refface.evaluation.perceptual_metrics import FaceLPIPSDistance, LPIPSDistance

                lpips = lpips or _lpips(download)
                kind = LPIPSDistance if name == "lpips" else FaceLPIPSDistance
                built.append(kind(lpips, device=device))
            elif name in ("niqe", "musiq"):
                from refface.evaluation.pyiqa_metrics import no_reference_metric

                metric = no_reference_metric(name, device)
                if isinstance(metric, Unavailable):
                    raise RefFaceError(metric.reason)
                built.append(metric)
            else:
                raise RefFaceError(f"{name} is not a per-image metric")
        except RefFaceError as error:
            unavailable[name] = str(error).rstrip(".")
    return built, unavailable
