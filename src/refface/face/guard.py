"""Identity guard: notice references that show different people, or a different person than the photo.

ReF-LDM copies identity from whatever it is given, so this check runs before restoring. The LQ face
is compared only when it is sharp and large enough for the embedder to be trusted; a heavily
degraded face is exactly what needs restoring and says little about who it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from refface.errors import RefFaceError
from refface.face.identity import IdentityEmbedder


@dataclass
class IdentityReport:
    """Distances between references and to the LQ face, and the warnings they raise."""

    embedder: str
    threshold: float
    reference_distances: np.ndarray
    lq_distances: np.ndarray | None = None
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"identity check ({self.embedder}, same person below {self.threshold:.2f})"]
        if self.reference_distances.size > 1:
            upper = self.reference_distances[np.triu_indices(len(self.reference_distances), 1)]
            parts.append(f"references differ by {upper.min():.2f}-{upper.max():.2f}")
        if self.lq_distances is not None:
            parts.append(f"photo to references {self.lq_distances.min():.2f}-{self.lq_distances.max():.2f}")
        return "; ".join(parts) + "."


def check_identity(
    embedder: IdentityEmbedder,
    references: Sequence[np.ndarray],
    labels: Sequence[str],
    lq: np.ndarray | None = None,
    strict: bool = False,
) -> IdentityReport:
    """Compare aligned reference crops with each other and with the (usable) LQ crop; raise when strict."""
    vectors = embedder.embed(list(references) + ([lq] if lq is not None else []))
    reference_vectors = vectors[: len(references)]
    threshold = embedder.same_person_distance
    pairwise = embedder.distances(reference_vectors, reference_vectors)
    report = IdentityReport(embedder.name, threshold, pairwise)
    if len(references) > 1:
        # Name the reference that is farthest from the others: the likely intruder.
        typical = np.nanmedian(np.where(np.eye(len(references), dtype=bool), np.nan, pairwise), axis=1)
        for index in np.argsort(-typical):
            if typical[index] < threshold:
                break
            report.warnings.append(
                f"reference {labels[index]} looks like a different person from the other references "
                f"(median {embedder.name} distance {typical[index]:.2f} >= {threshold:.2f})."
            )
    if lq is not None and len(references):
        report.lq_distances = embedder.distances(vectors[-1:], reference_vectors)[0]
        closest = float(report.lq_distances.min())
        if closest >= threshold:
            report.warnings.append(
                f"the photo's face looks like a different person from every reference (closest {embedder.name} "
                f"distance {closest:.2f} >= {threshold:.2f})."
            )
    if strict and report.warnings:
        raise RefFaceError(f"Identity check failed (--strict): {report.warnings[0]}")
    return report


# The LQ face is trusted for identity only when it is at least this large in its photo ...
USABLE_LQ_SIZE = 64
# ... and at least this sharp relative to the references.
USABLE_LQ_SHARPNESS = 0.3


def lq_is_usable(lq_sharpness: float, reference_sharpness: Sequence[float], face_size: float | None = None) -> bool:
    """Whether a (moderately) degraded face still says who it is: large enough and not far blurrier than the refs."""
    if face_size is not None and face_size < USABLE_LQ_SIZE:
        return False
    if not len(reference_sharpness):
        return True
    return lq_sharpness >= USABLE_LQ_SHARPNESS * float(np.median(reference_sharpness))
