"""Every face detector refface offers, by the name users choose (`--detector`, the ComfyUI node, the API).

The names are read without loading any model (the command line lists them); `make_detector` builds one.
"""

from __future__ import annotations

from refface.errors import RefFaceError
from refface.face.detection import FaceDetector

# auto: the best detector at hand (the offline cascade); cascade: dlib's detectors in turn, cheap ones first;
# hog and cnn: one dlib detector alone, as refface searched before the cascade.
DETECTOR_NAMES = ("auto", "cascade", "hog", "cnn")


def make_detector(name: str = "auto", shape_predictor=None) -> FaceDetector:
    """The detector called `name`; an unknown name is one sentence listing the known ones."""
    if name in ("auto", "cascade"):
        from refface.face.cascade import DlibCascade

        return DlibCascade(shape_predictor=shape_predictor)
    if name in ("hog", "cnn"):
        from refface.face.detection import DlibDetector

        return DlibDetector(name, shape_predictor=shape_predictor)
    raise RefFaceError(f"Unknown face detector {name!r}; choose one of {', '.join(DETECTOR_NAMES)}.")
