"""From a whole photo to aligned face crops: detect, refine landmarks, choose faces, align.

One pass of the 68-point predictor is unreliable on small or tilted faces; a second pass on the
upright, FFHQ-framed crop fixes most of that (it is what the predictor was trained on). Photos
scanned sideways get a second chance through rotated copies when nothing is found upright.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from refface.errors import RefFaceError
from refface.face.alignment import (
    ALIGNED_SIZE,
    MIN_FACE_SIZE,
    AlignedFace,
    align_face,
    big_enough,
    ffhq_quad,
    invert_matrix,
    quad_matrix,
    transform_points,
    warp_quad,
    yaw_asymmetry,
)
from refface.face.detection import DetectedFace, FaceDetector, import_dlib, load_shape_predictor
from refface.imaging import as_rgb_array, resize_square

# Where dlib's face box sits inside an FFHQ crop, as fractions of the side (measured on real faces).
CANONICAL_BOX = (0.22, 0.32, 0.77, 0.86)
REFINE_SIZE = 256
# Nose this far from the middle of the jaw (0 frontal, 1 profile) makes alignment and restoration unreliable.
EXTREME_YAW = 0.6
FALLBACK_ROTATIONS = (90, -90, 180, 45, -45)
# Detection runs on a copy no larger than this; the landmark refinement then works at full resolution.
DETECT_MAX_SIDE = 1600


class AlignedCropLandmarks:
    """The 68 landmarks of an FFHQ-aligned crop, fitted inside the known face box (no detector run).

    Returns the crop resized to `work_size` and dlib's full_object_detection on it, which both the
    dlib descriptor and the evaluation's face region start from.
    """

    def __init__(self, shape_predictor=None, work_size: int = REFINE_SIZE) -> None:
        dlib = import_dlib()
        self.work_size = work_size
        self._predictor = shape_predictor or load_shape_predictor()
        left, top, right, bottom = (round(v * work_size) for v in CANONICAL_BOX)
        self._box = dlib.rectangle(left, top, right, bottom)

    def __call__(self, face: np.ndarray):
        work = resize_square(np.ascontiguousarray(face, dtype=np.uint8), self.work_size)
        return work, self._predictor(work, self._box)


class NoFaceFound(RefFaceError):
    """The photo shows no face that can be aligned: not a mistake in an archive, a photo to pass over.

    `source` names the photo and `too_small` counts the faces found that were too small to align (0: none was
    found at all), so each front end can word the advice its user can act on; the message is the command line's.
    """

    def __init__(self, source: str, too_small: int = 0) -> None:
        self.source, self.too_small = str(source), too_small
        if too_small:
            message = (
                f"Every face found in {source} is under {MIN_FACE_SIZE} pixels across, too small to align; "
                "use a larger scan of the photo."
            )
        else:
            message = (
                f"No face was found in {source}; try --detector cnn for turned or small faces, or --aligned if it "
                "is already a face crop."
            )
        super().__init__(message)


@dataclass
class FaceSearch:
    """The aligned faces chosen from one photo and what the user should know about them."""

    faces: list[AlignedFace]
    notes: list[str] = field(default_factory=list)


def refine_landmarks(photo: np.ndarray, face: DetectedFace, detector: FaceDetector) -> DetectedFace:
    """Re-run the landmark model on the upright FFHQ crop of `face` and map the points back to the photo."""
    in_box = getattr(detector, "landmarks_in_box", None)
    if in_box is None:
        return face
    quad = ffhq_quad(face.landmarks)
    matrix = quad_matrix(quad, REFINE_SIZE)
    crop = warp_quad(photo, quad, REFINE_SIZE, pad=False)
    box = tuple(v * REFINE_SIZE for v in CANONICAL_BOX)
    landmarks = transform_points(invert_matrix(matrix), in_box(crop, box))
    return DetectedFace(face.box, face.score, landmarks)


def _rotated_search(photo: np.ndarray, detector: FaceDetector) -> list[DetectedFace]:
    """Detect in rotated copies of the photo; map boxes and landmarks back to the original frame."""
    height, width = photo.shape[:2]
    for angle in FALLBACK_ROTATIONS:
        rotation = cv2.getRotationMatrix2D((width / 2 - 0.5, height / 2 - 0.5), angle, 1.0)
        cos, sin = abs(rotation[0, 0]), abs(rotation[0, 1])
        new_w, new_h = int(np.ceil(width * cos + height * sin)), int(np.ceil(width * sin + height * cos))
        rotation[:, 2] += ((new_w - width) / 2, (new_h - height) / 2)
        rotated = cv2.warpAffine(photo, rotation, (new_w, new_h), flags=cv2.INTER_LINEAR)
        found = detector.detect(rotated)
        if found:
            back = invert_matrix(rotation)
            faces = []
            for face in found:
                landmarks = transform_points(back, face.landmarks)
                low, high = landmarks.min(axis=0), landmarks.max(axis=0)
                faces.append(DetectedFace((*low, *high), face.score, landmarks))
            return faces
    return []


def _scaled(face: DetectedFace, factor: float) -> DetectedFace:
    return DetectedFace(tuple(v * factor for v in face.box), face.score, face.landmarks * factor)


def detect_faces(photo: np.ndarray, detector: FaceDetector, refine: bool = True) -> list[DetectedFace]:
    """All faces in the photo, largest first, with refined landmarks.

    Big photos are searched at DETECT_MAX_SIDE pixels (a 24-megapixel scan upsampled by dlib would need
    gigabytes and minutes); refinement then places the landmarks on the full-resolution face.
    """
    factor = min(1.0, DETECT_MAX_SIDE / max(photo.shape[:2]))
    search = photo
    if factor < 1.0:
        size = (round(photo.shape[1] * factor), round(photo.shape[0] * factor))
        search = cv2.resize(photo, size, interpolation=cv2.INTER_AREA)
    faces = detector.detect(search) or _rotated_search(search, detector)
    if factor < 1.0:
        faces = [_scaled(face, photo.shape[1] / search.shape[1]) for face in faces]
        refine = True
    if refine:
        faces = [refine_landmarks(photo, face, detector) for face in faces]
    return faces


def find_faces(
    photo: np.ndarray,
    detector: FaceDetector,
    select: str | int = "all",
    size: int = ALIGNED_SIZE,
    source: str | Path = "the photo",
) -> FaceSearch:
    """Aligned crops of the chosen faces ('all', 'largest' or a 0-based index into the largest-first list)."""
    faces = detect_faces(photo, detector)
    if not faces:
        raise NoFaceFound(source)
    notes = []
    usable = [face for face in faces if big_enough(face)]
    if len(usable) < len(faces):
        notes.append(f"{source}: skipped {len(faces) - len(usable)} face(s) under {MIN_FACE_SIZE} pixels across.")
    if not usable:
        raise NoFaceFound(source, too_small=len(faces))
    if select == "largest":
        chosen = usable[:1]
        if len(usable) > 1:
            notes.append(f"{source}: {len(usable)} faces found; restoring the largest (choose with --face).")
    elif select == "all":
        chosen = usable
    else:
        index = int(select)
        if not 0 <= index < len(usable):
            raise RefFaceError(
                f"{source} has {len(usable)} usable face(s) (numbered 0 to {len(usable) - 1}, largest first); "
                f"face {index} does not exist."
            )
        chosen = [usable[index]]
    for number, face in enumerate(chosen):
        yaw = yaw_asymmetry(face.landmarks)
        if yaw > EXTREME_YAW:
            notes.append(
                f"{source}: face {number} is turned far to the side (asymmetry {yaw:.2f}); alignment and "
                "restoration may be poor."
            )
    return FaceSearch([align_face(photo, face, size) for face in chosen], notes)


def align_references(
    images: Sequence[Image.Image], sources: Sequence[str], detector: FaceDetector, aligned_size: int = ALIGNED_SIZE
) -> tuple[list[np.ndarray], list[str]]:
    """The largest face of each reference photo as an aligned crop, plus notes about ambiguous photos."""
    crops, notes = [], []
    for image, source in zip(images, sources, strict=True):
        search = find_faces(as_rgb_array(image), detector, "largest", aligned_size, source)
        crops.append(search.faces[0].image)
        notes.extend(search.notes)
    return crops, notes
