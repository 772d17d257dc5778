"""The face region of an aligned face crop, for face-only LPIPS (fLPIPS), from dlib's 68 landmarks."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from refface.face.locate import AlignedCropLandmarks

_JAW, _BROWS = slice(0, 17), slice(17, 27)
_FOREHEAD = 0.15  # eyebrows are raised by this fraction of the face height to take in the forehead
_FEATHER = 0.02  # edge softness as a fraction of the image width


@dataclass(frozen=True)
class FaceRegion:
    """A soft mask in [0, 1] (H x W float32); `found` is False when no face shape fitted and the mask is all ones."""

    mask: np.ndarray
    found: bool


class FaceRegionFinder:
    """The face region of an aligned crop from its 68 landmarks, fitted as `DlibEmbedder` fits them."""

    def __init__(self, shape_predictor=None) -> None:
        self._landmarks = AlignedCropLandmarks(shape_predictor)

    def __call__(self, face: np.ndarray) -> FaceRegion:
        height, width = face.shape[:2]
        _, shape = self._landmarks(face)
        work_size = self._landmarks.work_size
        points = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)
        if not np.isfinite(points).all() or len(points) != 68:
            return FaceRegion(np.ones((height, width), np.float32), False)
        jaw, brows = points[_JAW], points[_BROWS].copy()
        face_height = jaw[:, 1].max() - brows[:, 1].min()
        brows[:, 1] -= _FOREHEAD * face_height
        hull = cv2.convexHull(np.concatenate([jaw, brows]).astype(np.float32))
        scale = np.array([width / work_size, height / work_size], dtype=np.float32)
        mask = np.zeros((height, width), np.float32)
        cv2.fillConvexPoly(mask, np.round(hull[:, 0] * scale).astype(np.int32), 1.0, lineType=cv2.LINE_AA)
        sigma = max(0.5, _FEATHER * width)
        mask = cv2.GaussianBlur(mask, (0, 0), sigma)
        found = bool(mask.max() > 0.5 and mask.mean() > 0.05)
        return FaceRegion(np.clip(mask, 0.0, 1.0) if found else np.ones((height, width), np.float32), found)


def face_only(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The restoration inside the face region and the GT outside it, uint8."""
    blended = mask[..., None] * pred.astype(np.float32) + (1.0 - mask[..., None]) * gt.astype(np.float32)
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)


def mask_debug_image(gt: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The GT with everything outside the face region darkened and the region's edge drawn, for checking by eye."""
    shaded = gt.astype(np.float32) * (0.35 + 0.65 * mask[..., None])
    edge = cv2.Canny((mask > 0.5).astype(np.uint8) * 255, 50, 150) > 0
    shaded[edge] = (0, 255, 0)
    return shaded.astype(np.uint8)
