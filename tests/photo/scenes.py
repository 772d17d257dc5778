"""Small photos with one face of known landmarks, for the tests of the photo given back."""

from __future__ import annotations

import numpy as np

from refface.data.demo_photos import FaceScene, face_scene
from refface.face.alignment import AlignedFace, align_face
from refface.face.detection import DetectedFace


def aligned_in(scene: FaceScene, photo: np.ndarray | None = None) -> AlignedFace:
    """The scene's face aligned from its known landmarks (in `photo`, default the scene's own)."""
    photo = scene.photo if photo is None else photo
    left, top = scene.landmarks.min(axis=0)
    right, bottom = scene.landmarks.max(axis=0)
    return align_face(photo, DetectedFace((left, top, right, bottom), 1.0, scene.landmarks))


def scene_and_face(face_width: float, seed: int = 0) -> tuple[FaceScene, AlignedFace]:
    scene = face_scene(face_width, seed)
    return scene, aligned_in(scene)
