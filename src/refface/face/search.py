"""Where to look for faces in a photo: a shrunk copy, tiles of a large photo at full resolution, rotated copies.

A detector sees faces of a fixed range of sizes in the image it is given (dlib's HOG window is 80 px; upsampling
halves that). A large scan shrunk to a workable size loses its small faces, and searching it whole at full
resolution costs gigabytes; tiles keep both the resolution and the memory bounded. Every helper returns faces in
the coordinates of the photo it was given.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import cv2
import numpy as np

from refface.face.alignment import invert_matrix, transform_points
from refface.face.detection import DetectedFace

Detect = Callable[[np.ndarray], list[DetectedFace]]
FALLBACK_ROTATIONS = (90, -90, 180, 45, -45)
TILE = 1024  # tile side at full resolution
TILE_OVERLAP = 192  # more than the largest face a tile search looks for, so every face lies whole in some tile


def shrunk(photo: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """`photo` at most `max_side` pixels on its longer side (area-averaged) and the factor back to the photo."""
    factor = min(1.0, max_side / max(photo.shape[:2]))
    if factor >= 1.0:
        return photo, 1.0
    size = (max(1, round(photo.shape[1] * factor)), max(1, round(photo.shape[0] * factor)))
    copy = cv2.resize(photo, size, interpolation=cv2.INTER_AREA)
    return copy, photo.shape[1] / copy.shape[1]


def scaled(face: DetectedFace, factor: float, offset: tuple[float, float] = (0.0, 0.0)) -> DetectedFace:
    """A face found in a scaled (and offset) copy, in the photo's coordinates."""
    dx, dy = offset
    x0, y0, x1, y1 = face.box
    box = (x0 * factor + dx, y0 * factor + dy, x1 * factor + dx, y1 * factor + dy)
    points = None if face.points is None else face.points * factor + np.array([dx, dy])
    return replace(face, box=box, landmarks=face.landmarks * factor + np.array([dx, dy]), points=points)


def detect_shrunk(photo: np.ndarray, detect: Detect, max_side: int) -> list[DetectedFace]:
    copy, factor = shrunk(photo, max_side)
    return [scaled(face, factor) for face in detect(copy)]


def detect_resized(photo: np.ndarray, detect: Detect, side: int) -> list[DetectedFace]:
    """Faces found in a copy whose longer side is `side` pixels, enlarged or shrunk (a detector that only sees
    large faces looks at a small photo enlarged)."""
    factor = side / max(photo.shape[:2])
    size = (max(1, round(photo.shape[1] * factor)), max(1, round(photo.shape[0] * factor)))
    copy = cv2.resize(photo, size, interpolation=cv2.INTER_AREA if factor < 1 else cv2.INTER_CUBIC)
    return [scaled(face, photo.shape[1] / copy.shape[1]) for face in detect(copy)]


def detect_rotated(photo: np.ndarray, detect: Detect, angles=FALLBACK_ROTATIONS) -> list[DetectedFace]:
    """The faces of the first rotated copy that shows any, mapped back to the photo (a scan put in sideways)."""
    height, width = photo.shape[:2]
    for angle in angles:
        rotation = cv2.getRotationMatrix2D((width / 2 - 0.5, height / 2 - 0.5), angle, 1.0)
        cos, sin = abs(rotation[0, 0]), abs(rotation[0, 1])
        new_w, new_h = int(np.ceil(width * cos + height * sin)), int(np.ceil(width * sin + height * cos))
        rotation[:, 2] += ((new_w - width) / 2, (new_h - height) / 2)
        rotated = cv2.warpAffine(photo, rotation, (new_w, new_h), flags=cv2.INTER_LINEAR)
        found = detect(rotated)
        if found:
            back = invert_matrix(rotation)
            faces = []
            for face in found:
                landmarks = transform_points(back, face.landmarks)
                low, high = landmarks.min(axis=0), landmarks.max(axis=0)
                points = None if face.points is None else transform_points(back, face.points)
                faces.append(replace(face, box=(*low, *high), landmarks=landmarks, points=points))
            return faces
    return []


def tiles(height: int, width: int, tile: int = TILE, overlap: int = TILE_OVERLAP) -> list[tuple[int, int, int, int]]:
    """(top, left, bottom, right) of overlapping tiles covering a photo."""

    def starts(length: int) -> list[int]:
        if length <= tile:
            return [0]
        step = tile - overlap
        last = length - tile
        return sorted({*range(0, last, step), last})

    return [(top, left, min(top + tile, height), min(left + tile, width))
            for top in starts(height) for left in starts(width)]  # fmt: skip


def detect_tiled(
    photo: np.ndarray, detect: Detect, tile: int = TILE, overlap: int = TILE_OVERLAP
) -> list[DetectedFace]:
    """Every face of a large photo, searched tile by tile at full resolution (memory: one tile at a time); a
    face seen by two overlapping tiles is kept once."""
    found = []
    for top, left, bottom, right in tiles(*photo.shape[:2], tile, overlap):
        window = np.ascontiguousarray(photo[top:bottom, left:right])
        found.extend(scaled(face, 1.0, (left, top)) for face in detect(window))
    return suppress_overlaps(found)


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def suppress_overlaps(faces: list[DetectedFace], threshold: float = 0.3) -> list[DetectedFace]:
    """Faces that overlap a better-scoring one by more than `threshold` (intersection over union) are dropped."""
    kept: list[DetectedFace] = []
    for face in sorted(faces, key=lambda f: f.score, reverse=True):
        if all(iou(face.box, other.box) <= threshold for other in kept):
            kept.append(face)
    return kept
