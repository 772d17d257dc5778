"""Identity metrics: IDS and IDS(REF) with ArcFace, FaceNet's similarity (the Composite-Context paper's second
identity model), and dlib's as an offline one."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from torch import nn

from refface.evaluation.metrics import ImageMetric, to_tensor
from refface.face.identity import DlibEmbedder


def _cosine(a: np.ndarray, b: np.ndarray) -> list[float]:
    a = a / np.linalg.norm(a, axis=1, keepdims=True).clip(1e-12)
    b = b / np.linalg.norm(b, axis=1, keepdims=True).clip(1e-12)
    return np.sum(a * b, axis=1).astype(float).tolist()


class ArcFaceSimilarity(ImageMetric):
    """Cosine similarity of ArcFace embeddings of the restoration and the GT (`ids`) or first reference (`ids_ref`)."""

    higher_is_better = True

    def __init__(self, embedder: nn.Module, against: str = "gt", device: torch.device | str = "cpu") -> None:
        if against not in ("gt", "ref"):
            raise ValueError(f"against must be 'gt' or 'ref', not {against!r}")
        self.embedder, self.against, self.device = embedder.to(device).eval(), against, device
        self.name = "ids" if against == "gt" else "ids_ref"
        self.needs_refs = against == "ref"

    @torch.no_grad()
    def _embed(self, images) -> np.ndarray:
        # per image: a reference may have another size than the restoration, and embeddings do not care
        return np.concatenate([self.embedder(to_tensor([i], self.device) * 2 - 1).cpu().numpy() for i in images])

    def compute(self, preds, gts, refs) -> list[float]:
        targets = gts if self.against == "gt" else refs
        return _cosine(self._embed(preds), self._embed(targets))


class FaceNetSimilarity(ArcFaceSimilarity):
    """Cosine similarity of FaceNet embeddings of the restoration and the GT (`ids_facenet`)."""

    def __init__(self, embedder: nn.Module, device: torch.device | str = "cpu") -> None:
        super().__init__(embedder, "gt", device)
        self.name = "ids_facenet"

    @torch.no_grad()
    def _embed(self, images) -> np.ndarray:
        return np.concatenate([self.embedder(to_tensor([i], self.device)).cpu().numpy() for i in images])


class DlibSimilarity(ImageMetric):
    """Cosine similarity of dlib face descriptors of the restoration and the GT (offline second model)."""

    name: ClassVar[str] = "ids_dlib"
    higher_is_better = True

    def __init__(self, embedder: DlibEmbedder | None = None) -> None:
        self.embedder = embedder or DlibEmbedder()

    def compute(self, preds, gts, refs) -> list[float]:
        return _cosine(self.embedder.embed(list(preds)), self.embedder.embed(list(gts)))
