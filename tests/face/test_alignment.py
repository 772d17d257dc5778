"""FFHQ alignment on real faces placed into larger scenes, and lossless paste-back."""

from __future__ import annotations

import numpy as np
import pytest

from refface.errors import RefFaceError
from refface.face.alignment import (
    ffhq_quad,
    invert_matrix,
    quad_matrix,
    scale_matrix,
    transform_points,
    warp_quad,
)
from refface.face.detection import DlibDetector
from refface.face.locate import find_faces
from refface.face.paste import face_outline, feather_mask, paste_face
from tests.face.photos import astronaut, place


@pytest.fixture(scope="module")
def detector() -> DlibDetector:
    return DlibDetector()


@pytest.fixture(scope="module")
def reference_face(detector):
    """The astronaut aligned straight from the original photo."""
    return find_faces(astronaut(), detector, "largest").faces[0]


def test_quad_is_the_ffhq_square_and_matrix_maps_it_onto_the_crop():
    rng = np.random.default_rng(3)
    for _ in range(5):
        angle = rng.uniform(-np.pi, np.pi)
        rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        base = rng.uniform(0, 100, size=(68, 2))
        base[36:42] = [30, 40] + rng.normal(0, 1, (6, 2))  # left eye
        base[42:48] = [70, 40] + rng.normal(0, 1, (6, 2))  # right eye
        base[48], base[54] = [35, 85], [65, 85]  # mouth corners
        landmarks = base @ rotation.T + rng.uniform(-500, 500, 2)
        quad = ffhq_quad(landmarks)
        sides = np.linalg.norm(np.roll(quad.corners, -1, axis=0) - quad.corners, axis=1)
        assert np.allclose(sides, sides[0])  # a square ...
        assert abs(((quad.angle_degrees - np.degrees(angle)) + 180) % 360 - 180) < 3  # ... turned with the face
        for size in (16, 512, 1024):
            matrix = quad_matrix(quad, size)
            corners = transform_points(matrix, quad.corners)
            assert np.allclose(
                corners, [[-0.5, -0.5], [-0.5, size - 0.5], [size - 0.5, size - 0.5], [size - 0.5, -0.5]]
            )
            round_trip = transform_points(invert_matrix(matrix), corners)
            assert np.allclose(round_trip, quad.corners)
            scaled = scale_matrix(matrix, 2.0)
            assert np.allclose(transform_points(scaled, quad.corners[:1]), [[-0.5, -0.5]])


def test_bad_landmarks_are_refused():
    with pytest.raises(RefFaceError, match="68 landmarks"):
        ffhq_quad(np.zeros((5, 2)))
    with pytest.raises(RefFaceError, match="degenerate"):
        ffhq_quad(np.zeros((68, 2)))


@pytest.mark.parametrize(
    ("angle", "scale", "centre"),
    [(20, 1.7, (380, 300)), (-35, 0.6, (200, 400)), (4, 2.5, (420, 560)), (90, 1.0, (320, 280))],
)
def test_alignment_recovers_the_crop_of_a_moved_face(detector, reference_face, angle, scale, centre):
    scene, matrix = place(astronaut(), angle, scale, centre)
    found = find_faces(scene, detector, "largest").faces[0]
    # The landmarks in crop coordinates agree with those of the original photo to about a pixel.
    assert np.abs(found.landmarks - reference_face.landmarks).mean() < 3.0
    # The crop square is the original one moved by the known transform (error in crop pixels at 512).
    expected = transform_points(matrix, reference_face.quad.corners)
    assert np.abs(expected - found.quad.corners).max() * 512 / found.quad.size < 8.0
    # And the face region of the crop looks the same.
    inner = (slice(128, 384), slice(128, 384))
    diff = np.abs(found.image[inner].astype(float) - reference_face.image[inner].astype(float)).mean()
    assert diff < 8.0


def test_padding_fills_the_outside_of_the_photo_smoothly(detector):
    # The face right at the top edge: much of the FFHQ square lies outside the photo.
    scene, _ = place(astronaut(), 0, 1.0, (320, 185), canvas=(640, 500))
    face = find_faces(scene, detector, "largest").faces[0]
    plain = warp_quad(scene, face.quad, 512, pad=False)
    assert face.image[:40].std() > 0  # mirrored and blurred, not a flat fill
    assert np.abs(face.image[:40].astype(float) - plain[:40].astype(float)).mean() > 2  # the padding changed it
    assert np.array_equal(face.image[300:], plain[300:])  # inside the photo nothing is touched


@pytest.mark.parametrize("restored_size", [512, 64, 1024])
@pytest.mark.parametrize("mask", ["square", "face"])
def test_paste_back_changes_only_the_face_square(detector, restored_size, mask):
    scene, _ = place(astronaut(), 15, 1.2, (340, 300))
    before = scene.copy()
    face = find_faces(scene, detector, "largest").faces[0]
    rng = np.random.default_rng(restored_size)
    restored = rng.integers(0, 256, (restored_size, restored_size, 3), dtype=np.uint8)
    result = paste_face(scene, restored, face, mask=mask)
    assert np.array_equal(scene, before)  # the input photo is not modified
    changed = np.any(result != scene, axis=-1)
    inside = _inside_quad(face.quad.corners, scene.shape[:2])
    assert changed.any()
    assert not (changed & ~inside).any()  # outside the face square: bit for bit identical
    if mask == "square":
        assert changed[inside].mean() > 0.5
        return
    # The face's outline: the jaw line and a forehead above the brows; the square's corners stay the photo's.
    crop_pixel = int(np.ceil(face.quad.size / restored_size))  # the mask is drawn at the crop's resolution
    outline = _inside_polygon(face_outline(face.face.landmarks), scene.shape[:2], 2 + crop_pixel)
    assert not (changed & ~outline).any()
    assert changed[outline].mean() > 0.6
    assert 0.2 < changed[inside].mean() < 0.6


def test_pasting_the_unchanged_crop_gives_back_the_photo(detector):
    scene, _ = place(astronaut(), -10, 1.4, (300, 280))
    face = find_faces(scene, detector, "largest").faces[0]
    result = paste_face(scene, face.image, face)
    inside = _inside_quad(face.quad.corners, scene.shape[:2])
    assert np.abs(result.astype(float) - scene.astype(float))[inside].mean() < 2.0


def test_feather_mask_is_zero_at_the_edge_and_one_in_the_middle():
    for size in (16, 100, 512):
        mask = feather_mask(size)
        assert mask[0].max() == 0 and mask[:, 0].max() == 0 and mask[-1].max() == 0
        assert mask[size // 2, size // 2] == 1.0
        assert np.all(np.diff(mask[size // 2, : size // 2]) >= 0)


def _inside_quad(corners: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    import cv2

    mask = np.zeros(shape, dtype=np.uint8)
    cv2.fillConvexPoly(mask, np.round(corners).astype(np.int32), 1)
    return cv2.dilate(mask, np.ones((5, 5), np.uint8)).astype(bool)


def _inside_polygon(points: np.ndarray, shape: tuple[int, int], margin: int) -> np.ndarray:
    import cv2

    mask = np.zeros(shape, dtype=np.uint8)
    cv2.fillConvexPoly(mask, np.rint(points).astype(np.int32), 1)
    return cv2.dilate(mask, np.ones((2 * margin + 1,) * 2, np.uint8)).astype(bool)
