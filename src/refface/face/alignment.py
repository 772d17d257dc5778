"""FFHQ-style face alignment: the oriented square the FFHQ recipe derives from eyes and mouth.

The FFHQ script crops, shrinks, pads and resamples through a QUAD transform; the quad is a rotated
square, so the whole mapping is one similarity transform. We keep that transform explicit (a 2x3
matrix from photo pixels to crop pixels, pixel centres at integer coordinates as in OpenCV) so the
restored crop can be warped back into the photo exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from refface.errors import RefFaceError
from refface.face.detection import DetectedFace

ALIGNED_SIZE = 512
# Faces whose FFHQ square is smaller than this (in photo pixels) have too little detail for the
# 68-point landmarks to place the crop reliably.
MIN_FACE_SIZE = 24


@dataclass(frozen=True)
class FaceQuad:
    """The FFHQ crop square in photo coordinates: corners top-left, bottom-left, bottom-right, top-right."""

    corners: np.ndarray

    @property
    def size(self) -> float:
        """Side length in photo pixels (FFHQ's `qsize`)."""
        return float(np.hypot(*(self.corners[3] - self.corners[0])))

    @property
    def angle_degrees(self) -> float:
        """In-plane rotation of the face (0 = eyes level)."""
        dx, dy = self.corners[3] - self.corners[0]
        return float(np.degrees(np.arctan2(dy, dx)))


@dataclass(frozen=True)
class AlignedFace:
    """An aligned crop and everything needed to put a restored version of it back into the photo."""

    image: np.ndarray  # uint8 [size, size, 3]
    matrix: np.ndarray  # 2x3, photo pixel -> crop pixel
    quad: FaceQuad
    face: DetectedFace | None
    photo_shape: tuple[int, int]  # (height, width) of the source photo

    @property
    def size(self) -> int:
        return int(self.image.shape[0])

    @property
    def landmarks(self) -> np.ndarray | None:
        """The detected landmarks in crop coordinates."""
        if self.face is None:
            return None
        return transform_points(self.matrix, self.face.landmarks)


def ffhq_quad(landmarks: np.ndarray) -> FaceQuad:
    """The FFHQ recipe: a square centred a little below the eyes, sized by eye and eye-mouth distances."""
    landmarks = np.asarray(landmarks, dtype=np.float64)
    if landmarks.shape != (68, 2):
        raise RefFaceError(f"FFHQ alignment needs 68 landmarks as [68, 2], got shape {list(landmarks.shape)}.")
    eye_left = landmarks[36:42].mean(axis=0)
    eye_right = landmarks[42:48].mean(axis=0)
    eye_avg = (eye_left + eye_right) * 0.5
    eye_to_eye = eye_right - eye_left
    mouth_avg = (landmarks[48] + landmarks[54]) * 0.5
    eye_to_mouth = mouth_avg - eye_avg

    x = eye_to_eye - np.flipud(eye_to_mouth) * [-1, 1]
    norm = np.hypot(*x)
    if not np.isfinite(norm) or norm < 1e-6:
        raise RefFaceError("The face landmarks are degenerate (eyes and mouth coincide); cannot align this face.")
    x = x / norm * max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = np.flipud(x) * [-1, 1]
    centre = eye_avg + eye_to_mouth * 0.1
    return FaceQuad(np.stack([centre - x - y, centre - x + y, centre + x + y, centre + x - y]))


def quad_matrix(quad: FaceQuad, size: int) -> np.ndarray:
    """2x3 matrix mapping the quad onto a size x size crop (quad corners land on the crop's outer corners)."""
    source = np.hstack([quad.corners[[0, 1, 3]], np.ones((3, 1))])
    edge = size - 0.5
    target = np.array([[-0.5, -0.5], [-0.5, edge], [edge, -0.5]])
    return np.linalg.solve(source, target).T  # float64: photo coordinates can be large


def transform_points(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    points = np.asarray(points, dtype=np.float64)
    return points @ matrix[:, :2].T + matrix[:, 2]


def invert_matrix(matrix: np.ndarray) -> np.ndarray:
    return cv2.invertAffineTransform(matrix)


def scale_matrix(matrix: np.ndarray, factor: float) -> np.ndarray:
    """The matrix for the same crop resampled by `factor` (pixel centres stay consistent)."""
    scaled = matrix * factor
    scaled[:, 2] += 0.5 * factor - 0.5
    return scaled


def _prefiltered(photo: np.ndarray, matrix: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Downscale the photo first when the crop shrinks it a lot, so the warp does not alias (FFHQ's 'shrink')."""
    shrink = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))  # crop pixels per photo pixel
    if shrink >= 0.5:
        return photo, matrix
    factor = shrink * 2.0
    height, width = photo.shape[:2]
    new_size = (max(1, round(width * factor)), max(1, round(height * factor)))
    small = cv2.resize(photo, new_size, interpolation=cv2.INTER_AREA)
    fx, fy = new_size[0] / width, new_size[1] / height
    to_small = np.array([[fx, 0, 0.5 * fx - 0.5], [0, fy, 0.5 * fy - 0.5], [0, 0, 1]])
    from_small = np.linalg.inv(to_small)
    return small, (np.vstack([matrix, [0, 0, 1]]) @ from_small)[:2]


def _padding_blend(crop: np.ndarray, matrix: np.ndarray, photo_shape: tuple[int, int], quad_size: float) -> np.ndarray:
    """FFHQ's padding: beyond the photo edge, fade the mirrored content into blur and then the median colour."""
    size = crop.shape[0]
    height, width = photo_shape
    # How far outside the photo a crop pixel lies is convex in the pixel, so its largest value over the crop is
    # at a corner: a crop inside the photo needs no padding (most faces; it spares a per-pixel pass).
    corners = transform_points(invert_matrix(matrix), np.array([[0, 0], [0, size - 1], [size - 1, 0], [size - 1] * 2]))
    if max(-corners[:, 0].min(), corners[:, 0].max() - (width - 1), -corners[:, 1].min(),
           corners[:, 1].max() - (height - 1)) <= 1.0:  # fmt: skip
        return crop
    grid = np.stack(np.meshgrid(np.arange(size), np.arange(size)), axis=-1).reshape(-1, 2)
    photo_points = transform_points(invert_matrix(matrix), grid)
    outside = np.maximum.reduce(
        [-photo_points[:, 0], photo_points[:, 0] - (width - 1), -photo_points[:, 1], photo_points[:, 1] - (height - 1)]
    ).reshape(size, size)
    if outside.max() <= 1.0:
        return crop
    mask = (outside / max(quad_size * 0.3, 1.0))[..., None].astype(np.float32)
    image = crop.astype(np.float32)
    blurred = cv2.GaussianBlur(image, (0, 0), sigmaX=max(size * 0.02, 0.5))
    image += (blurred - image) * np.clip(mask * 3.0 + 1.0, 0.0, 1.0)
    image += (np.median(image.reshape(-1, 3), axis=0) - image) * np.clip(mask, 0.0, 1.0)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def warp_quad(photo: np.ndarray, quad: FaceQuad, size: int = ALIGNED_SIZE, pad: bool = True) -> np.ndarray:
    """Resample the quad of `photo` (uint8 RGB) to a size x size crop."""
    matrix = quad_matrix(quad, size)
    source, source_matrix = _prefiltered(photo, matrix, size)
    crop = cv2.warpAffine(source, source_matrix, (size, size), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT_101)
    if pad:
        crop = _padding_blend(crop, matrix, photo.shape[:2], quad.size)
    return crop


def big_enough(face: DetectedFace) -> bool:
    """Whether a detected face is large enough to align and restore: its FFHQ square is at least MIN_FACE_SIZE
    photo pixels across (the one place this is decided, for photos, albums and video frames)."""
    return ffhq_quad(face.landmarks).size >= MIN_FACE_SIZE


def align_face(photo: np.ndarray, face: DetectedFace, size: int = ALIGNED_SIZE, pad: bool = True) -> AlignedFace:
    """FFHQ-aligned crop of one detected face, with the transform that put it there."""
    if not big_enough(face):
        quad = ffhq_quad(face.landmarks)
        raise RefFaceError(
            f"The face at {tuple(round(v) for v in face.box)} is only about {quad.size:.0f} pixels across, too small "
            f"to align reliably (at least {MIN_FACE_SIZE} needed)."
        )
    quad = ffhq_quad(face.landmarks)
    matrix = quad_matrix(quad, size)
    return AlignedFace(warp_quad(photo, quad, size, pad), matrix, quad, face, photo.shape[:2])


def yaw_asymmetry(landmarks: np.ndarray) -> float:
    """0 for a frontal face, towards 1 for a profile: how far the nose tip sits from the middle of the jaw line."""
    landmarks = np.asarray(landmarks, dtype=np.float64)
    left, right, nose = landmarks[0], landmarks[16], landmarks[30]
    axis = right - left
    width = float(np.hypot(*axis))
    if width < 1e-6:
        return 1.0
    along = float(np.dot(nose - left, axis) / width)
    return abs(2.0 * along / width - 1.0)
