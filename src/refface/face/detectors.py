"""Every face detector refface offers, by the name users choose (`--detector`, the web page, ComfyUI, the API).

The names are read without loading any model (the command line lists them); `choose_detector` builds one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from refface.errors import RefFaceError
from refface.face.detection import FaceDetector
from refface.weights import DownloadFailed, ensure_weights

if TYPE_CHECKING:  # the names are read by argument parsing, which must not load torch
    import torch

# auto: RetinaFace where its weights are at hand or can be downloaded, else the offline cascade (with a note);
# retinaface: the learned detector, downloaded on first use; cascade: dlib's detectors in turn, cheap ones first;
# hog and cnn: one dlib detector alone, as refface searched before the cascade.
DETECTOR_NAMES = ("auto", "retinaface", "cascade", "hog", "cnn")


def _retinaface(device: str | torch.device, shape_predictor, progress: bool) -> FaceDetector:
    from refface.face.retinaface import RETINAFACE_WEIGHTS, RetinaFaceDetector, load_retinaface

    network = load_retinaface(ensure_weights(RETINAFACE_WEIGHTS, progress=progress))
    return RetinaFaceDetector(network, device, shape_predictor=shape_predictor)


def choose_detector(
    name: str = "auto", device: str | torch.device = "cpu", shape_predictor=None, progress: bool = True
) -> tuple[FaceDetector, list[str]]:
    """The detector called `name` and what its user should know about the choice (`auto` without RetinaFace's
    weights: one note, and the cascade); an unknown name is one sentence listing the known ones."""
    if name in ("auto", "retinaface"):
        try:
            return _retinaface(device, shape_predictor, progress), []
        except DownloadFailed as failed:
            if name == "retinaface":
                raise
            note = (
                f"the RetinaFace detector's weights are not at hand ({failed.reason}); dlib's detectors search "
                "instead (`refface download` fetches them)."
            )
            return choose_detector("cascade", device, shape_predictor)[0], [note]
    if name == "cascade":
        from refface.face.cascade import DlibCascade

        return DlibCascade(shape_predictor=shape_predictor), []
    if name in ("hog", "cnn"):
        from refface.face.detection import DlibDetector

        return DlibDetector(name, shape_predictor=shape_predictor), []
    raise RefFaceError(f"Unknown face detector {name!r}; choose one of {', '.join(DETECTOR_NAMES)}.")
