"""A ground-truth identity score for the synthetic task: the stand-in for ArcFace IDS where the answer is known.

On real faces IDS asks a face-recognition network whether a restoration shows the right person.
On the synthetic task we know every photo's parameters, so we can ask exactly: redraw every person
of the split in the target photo's pose, lighting and expression (`render_as`); whatever those
candidates have in common (background, pose, the average face) says nothing about identity, and
what is left is the identity signal.

- `similarity`: cosine between the restoration's and the true person's deviation from the
  candidates' mean. 1 for the ground truth, about 0 for an identity-free average face, about
  -1/(N-1) for another person of the split; like IDS, higher is better.
- `correct`: whether the true person is the candidate nearest to the restoration (re-identification
  among the split's N people; chance is 1/N).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from refface.data.synthetic import SyntheticReferenceDataset
from refface.errors import RefFaceError

__all__ = ["IdentityScore", "SyntheticIdentityScorer"]


@dataclass(frozen=True)
class IdentityScore:
    similarity: float
    correct: bool
    nearest: int


class SyntheticIdentityScorer:
    """Scores images as photo (identity, photo) of a synthetic split against all of the split's people."""

    def __init__(self, dataset: SyntheticReferenceDataset) -> None:
        if len(dataset.identities) < 2:
            raise RefFaceError("The synthetic identity score needs a split with at least 2 identities to compare.")
        self.dataset = dataset

    def candidates(self, identity: int, photo: int) -> np.ndarray:
        """Every person of the split in the conditions of photo (identity, photo): [N, S, S, 3] in [0, 1]."""
        people = range(len(self.dataset.identities))
        return np.stack([self.dataset.render_as(person, identity, photo) for person in people]).astype(np.float32) / 255

    def score(self, image: np.ndarray, identity: int, photo: int) -> IdentityScore:
        """`image` (S x S x 3, uint8 or float in [0, 1]) as a restoration of photo (identity, photo)."""
        pixels = _as_unit_float(image)
        candidates = self.candidates(identity, photo)
        if pixels.shape != candidates.shape[1:]:
            raise RefFaceError(
                f"The image to score is {pixels.shape[1]}x{pixels.shape[0]} with {pixels.shape[2]} channels, "
                f"but the synthetic photos are {candidates.shape[2]}x{candidates.shape[1]} RGB."
            )
        mean = candidates.mean(axis=0)
        own, truth = (pixels - mean).ravel(), (candidates[identity] - mean).ravel()
        norm = float(np.linalg.norm(own) * np.linalg.norm(truth))
        similarity = float(own @ truth) / norm if norm > 0 else 0.0
        distances = ((candidates - pixels) ** 2).reshape(len(candidates), -1).sum(axis=1)
        nearest = int(np.argmin(distances))
        return IdentityScore(similarity, nearest == identity, nearest)


def _as_unit_float(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise RefFaceError(f"The image to score must be height x width x 3 RGB, got shape {image.shape}.")
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255
    return np.clip(image.astype(np.float32), 0.0, 1.0)
