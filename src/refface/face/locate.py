"""From a whole photo to aligned face crops: detect, refine landmarks, choose faces, align.

One pass of the 68-point predictor is unreliable on small or tilted faces; a second pass on the
upright, FFHQ-framed crop fixes most of that (it is what the predictor was trained on). Photos
scanned sideways get a second chance through rotated copies when nothing is found upright.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

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
from refface.face.five_points import agree, landmarks_from_five
from refface.face.search import detect_rotated, scaled, shrunk
from refface.imaging import as_rgb_array, resize_square

# Where dlib's face box sits inside an FFHQ crop, as fractions of the side (measured on real faces).
CANONICAL_BOX = (0.22, 0.32, 0.77, 0.86)
REFINE_SIZE = 256
# Nose this far from the middle of the jaw (0 frontal, 1 profile) makes alignment and restoration unreliable.
EXTREME_YAW = 0.6
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
    `unaligned`: why the faces that were found could not be aligned, when that is what stopped them.
    """

    def __init__(self, source: str, too_small: int = 0, unaligned: str | None = None) -> None:
        self.source, self.too_small, self.unaligned = str(source), too_small, unaligned
        if unaligned is not None:
            message = f"The face(s) found in {source} could not be aligned ({unaligned})."
        elif too_small:
            message = (
                f"Every face found in {source} is under {MIN_FACE_SIZE} pixels across, too small to align; "
                "use a larger scan of the photo."
            )
        else:
            message = f"No face was found in {source}; if it is already an aligned face crop, pass --aligned."
        super().__init__(message)


@dataclass(frozen=True)
class DroppedFace:
    """A face the detector saw that is not restored, and why: the report and the page list every one."""

    box: tuple[float, float, float, float]
    reason: str

    @property
    def where(self) -> str:
        x0, y0, x1, y1 = (round(v) for v in self.box)
        return f"({x0}, {y0})-({x1}, {y1})"


@dataclass
class FaceSearch:
    """The aligned faces chosen from one photo, the faces seen but not chosen or not usable, and what the user
    should know about them."""

    faces: list[AlignedFace]
    notes: list[str] = field(default_factory=list)
    dropped: list[DroppedFace] = field(default_factory=list)


def landmarks_fit(face: DetectedFace) -> bool:
    """Whether the 68 landmarks sit on the face the detector boxed (centres within a third of the box's width,
    sizes within a factor of 2); when they do not, the alignment follows the landmarks to somewhere else."""
    low, high = face.landmarks.min(axis=0), face.landmarks.max(axis=0)
    box = np.asarray(face.box, dtype=np.float64)
    width = max(box[2] - box[0], 1.0)
    offset = np.hypot(*((low + high) / 2 - (box[:2] + box[2:]) / 2))
    return bool(offset <= width / 3 and 0.5 <= (high[0] - low[0]) / width <= 2.0)


def _dropped_notes(source: str | Path, dropped: list[DroppedFace], found: int) -> list[str]:
    """One note per reason: how many faces, and where."""
    by_reason: dict[str, list[DroppedFace]] = {}
    for face in dropped:
        by_reason.setdefault(face.reason, []).append(face)
    return [
        f"{source}: {found} faces found; {len(faces)} not restored, {reason}: at "
        f"{', '.join(face.where for face in faces)}."
        for reason, faces in by_reason.items()
    ]


def refine_landmarks(photo: np.ndarray, face: DetectedFace, detector: FaceDetector) -> DetectedFace:
    """Re-run the landmark model on the upright FFHQ crop of `face` and map the points back to the photo.

    A face the detector gave five points for keeps landmarks placed on those points when the refined 68 do not
    agree with them (`from_points`): the detector is sure of the face, the 68-point model cannot read it."""
    in_box = getattr(detector, "landmarks_in_box", None)
    if in_box is None:
        return face
    quad = ffhq_quad(face.landmarks)
    matrix = quad_matrix(quad, REFINE_SIZE)
    crop = warp_quad(photo, quad, REFINE_SIZE, pad=False)
    box = tuple(v * REFINE_SIZE for v in CANONICAL_BOX)
    landmarks = transform_points(invert_matrix(matrix), in_box(crop, box))
    if face.points is not None and not agree(landmarks, face.points):
        return replace(face, landmarks=landmarks_from_five(face.points), from_points=True)
    return replace(face, landmarks=landmarks, from_points=False)


def detect_faces(photo: np.ndarray, detector: FaceDetector, refine: bool = True) -> list[DetectedFace]:
    """All faces in the photo, largest first, with refined landmarks.

    A detector with its own `search(photo)` (the offline cascade: shrunk copies, tiles, rotated copies, its
    stages in turn) searches the photo itself. Any other searches a copy of at most DETECT_MAX_SIDE pixels (a
    24-megapixel scan upsampled by dlib would need gigabytes and minutes), then rotated copies when nothing is
    upright. Refinement places the landmarks on the full-resolution face.
    """
    own_search = getattr(detector, "search", None)
    if own_search is not None:
        faces = own_search(photo)
    else:
        copy, factor = shrunk(photo, DETECT_MAX_SIDE)
        faces = [scaled(face, factor) for face in detector.detect(copy) or detect_rotated(copy, detector.detect)]
        refine = refine or factor > 1.0
    return _refined(photo, faces, detector, refine)


def detect_faces_many(photos: Sequence[np.ndarray], detector: FaceDetector) -> list[list[DetectedFace]]:
    """`detect_faces` for several photos (video frames): a detector with `search_many` (RetinaFace) runs them
    through its network as batches, which is what makes a GPU worth it."""
    search_many = getattr(detector, "search_many", None)
    if search_many is None:
        return [detect_faces(photo, detector) for photo in photos]
    return [_refined(photo, faces, detector, True) for photo, faces in zip(photos, search_many(photos), strict=True)]


def _refined(photo: np.ndarray, faces: list[DetectedFace], detector: FaceDetector, refine: bool) -> list[DetectedFace]:
    if refine:
        faces = [refine_landmarks(photo, face, detector) for face in faces]
    return sorted(faces, key=lambda face: face.area, reverse=True)


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
    usable = [face for face in faces if big_enough(face)]
    dropped = [DroppedFace(face.box, f"under {MIN_FACE_SIZE} pixels across") for face in faces if not big_enough(face)]
    if not usable:
        raise NoFaceFound(source, too_small=len(faces))
    if select == "largest":
        chosen = [0]
        dropped += [DroppedFace(face.box, "not the largest (choose with --face)") for face in usable[1:]]
    elif select == "all":
        chosen = list(range(len(usable)))
    else:
        index = int(select)
        if not 0 <= index < len(usable):
            raise RefFaceError(
                f"{source} has {len(usable)} usable face(s) (numbered 0 to {len(usable) - 1}, largest first); "
                f"face {index} does not exist."
            )
        chosen = [index]
        dropped += [DroppedFace(face.box, f"not face {index} (--face)") for n, face in enumerate(usable) if n != index]
    notes, aligned, failures = [], [], []
    for index in chosen:
        face = usable[index]
        try:
            aligned.append(align_face(photo, face, size))
        except RefFaceError as error:
            failures.append(str(error).rstrip("."))
            dropped.append(DroppedFace(face.box, "it could not be aligned"))
            continue
        yaw = yaw_asymmetry(face.landmarks)
        if yaw > EXTREME_YAW:
            notes.append(
                f"{source}: face {index} is turned far to the side (asymmetry {yaw:.2f}); alignment and "
                "restoration may be poor."
            )
        if face.from_points:
            notes.append(
                f"{source}: face {index}: the 68-point model could not read it; aligned from the detector's five "
                "points."
            )
        elif not landmarks_fit(face):
            notes.append(
                f"{source}: face {index}: its 68 landmarks do not sit on the face the detector found; its alignment "
                "may be off."
            )
    if not aligned:
        raise NoFaceFound(source, unaligned=failures[0])
    return FaceSearch(aligned, [*_dropped_notes(source, dropped, len(faces)), *notes], dropped)


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
