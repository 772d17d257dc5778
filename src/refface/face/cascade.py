"""The offline face detector: dlib's detectors as a cascade, cheap stages first, stopping at the first that finds.

Old photos are small, blurred and damaged, and scans can be huge. One HOG pass at one size misses much of that,
and running the slowest detector on every photo would take minutes per archive. So the stages run in turn and
the search stops at the first that finds a face:

1. HOG at two sizes together: on a copy of at most 1600 px (the faces of most photos, about 0.1 s per
   megapixel) and at twice the size on a copy of at most 1000 px (faces of 20 to 40 px), the two merged: a group
   photo can hold a large face and a small one, and both are wanted. HOG at twice the size also sees faces in
   noise, so a face only it finds is kept when the CNN detector, shown that face enlarged, confirms it;
2. for photos larger than 1600 px, HOG on tiles at full resolution (a 90 px face in a 20,000 px panorama or a
   9,000 px scan), one tile in memory at a time;
3. HOG on rotated copies (a scan put in sideways, a face turned far in the image plane);
4. dlib's CNN detector on a copy resized to 800 px (a small photo enlarged), slower but more tolerant of pose
   and blur.

Every stage works with the 68-point landmark model, so faces align exactly as the released model was trained.
"""

from __future__ import annotations

import cv2
import numpy as np

from refface.face.detection import DetectedFace, DlibDetector, load_shape_predictor
from refface.face.search import (
    detect_resized,
    detect_rotated,
    detect_shrunk,
    detect_tiled,
    iou,
    scaled,
    shrunk,
    suppress_overlaps,
)

WHOLE_SIDE = 1600  # stage 1 (as every detector's whole-photo search)
SMALL_FACE_SIDE = 1000  # stage 2: HOG at 2x sees faces down to about 20 px in a copy this large
CNN_SIDE = 800  # stage 4
CONFIRM_WIDTH = 160  # a face only HOG at 2x found is shown to the CNN detector this wide
TILE_UPSAMPLE_PIXELS = 20_000_000  # tiles of larger photos are searched at 1x (faces from 80 px), smaller at 2x


class DlibCascade:
    """The cascade as a `FaceDetector`: `search(photo)` runs the stages on a whole photo (what `detect_faces`
    calls); `detect(image)` runs the first stage's detector on the image as it is."""

    name = "cascade"

    def __init__(self, min_score: float = 0.3, shape_predictor=None) -> None:
        self.shape_predictor = shape_predictor or load_shape_predictor()
        self.min_score = min_score
        self._hog = {
            upsample: DlibDetector("hog", upsample, min_score, self.shape_predictor) for upsample in (0, 1, 2)
        }
        self._cnn: DlibDetector | None = None

    def landmarks_in_box(self, image: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
        return self._hog[1].landmarks_in_box(image, box)

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        return self._hog[1].detect(image)

    def _cnn_detect(self, image: np.ndarray) -> list[DetectedFace]:
        if self._cnn is None:
            self._cnn = DlibDetector("cnn", 0, self.min_score, self.shape_predictor)
        return self._cnn.detect(image)

    def stages(self, photo: np.ndarray):
        """(name, search) of each stage, in the order they run."""
        height, width = photo.shape[:2]
        large = max(height, width) > WHOLE_SIDE
        tile_upsample = 0 if height * width > TILE_UPSAMPLE_PIXELS else 1
        return [
            ("HOG", lambda: self._hog_two_sizes(photo)),
            ("tiles", lambda: detect_tiled(photo, self._hog[tile_upsample].detect) if large else []),
            ("rotated", lambda: self._rotated(photo)),
            ("CNN", lambda: detect_resized(photo, self._cnn_detect, CNN_SIDE)),
        ]

    def _hog_two_sizes(self, photo: np.ndarray) -> list[DetectedFace]:
        whole = detect_shrunk(photo, self._hog[1].detect, WHOLE_SIDE)
        small = [
            face
            for face in detect_shrunk(photo, self._hog[2].detect, SMALL_FACE_SIDE)
            if all(iou(face.box, other.box) <= 0.3 for other in whole) and self._confirmed(photo, face)
        ]
        return whole + suppress_overlaps(small)

    def _confirmed(self, photo: np.ndarray, face: DetectedFace) -> bool:
        """Whether the CNN detector sees a face where HOG did, in a crop around it enlarged to CONFIRM_WIDTH."""
        x0, y0, x1, y1 = face.box
        reach = 1.5 * max(x1 - x0, 1.0)
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        left, top = int(max(0, cx - reach)), int(max(0, cy - reach))
        right, bottom = int(min(photo.shape[1], cx + reach)), int(min(photo.shape[0], cy + reach))
        factor = CONFIRM_WIDTH / max(x1 - x0, 1.0)
        crop = photo[top:bottom, left:right]
        size = (max(1, round(crop.shape[1] * factor)), max(1, round(crop.shape[0] * factor)))
        enlarged = cv2.resize(crop, size, interpolation=cv2.INTER_CUBIC)
        box = ((x0 - left) * factor, (y0 - top) * factor, (x1 - left) * factor, (y1 - top) * factor)
        return any(iou(box, seen.box) > 0.3 for seen in self._cnn_detect(np.ascontiguousarray(enlarged)))

    def _rotated(self, photo: np.ndarray) -> list[DetectedFace]:
        copy, factor = shrunk(photo, WHOLE_SIDE)
        return [scaled(face, factor) for face in detect_rotated(copy, self._hog[1].detect)]

    def search(self, photo: np.ndarray) -> list[DetectedFace]:
        """The faces the first stage that finds any finds (none: an empty list)."""
        photo = np.ascontiguousarray(photo)
        for _, stage in self.stages(photo):
            faces = stage()
            if faces:
                return faces
        return []
