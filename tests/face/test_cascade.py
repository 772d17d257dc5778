"""The offline cascade: degraded and small faces HOG alone misses, large scans searched in tiles, and no face
that is seen but not restored left unsaid."""

from __future__ import annotations

import csv
import io

import cv2
import numpy as np
import pytest
from PIL import Image

from refface.cli import main
from refface.face.cascade import DlibCascade
from refface.face.detection import DetectedFace, DlibDetector
from refface.face.locate import detect_faces, find_faces, landmarks_fit
from refface.face.search import detect_tiled, suppress_overlaps, tiles
from tests.face.photos import astronaut, degrade, grace_hopper, place
from tests.face.test_album import write_album


def _jpeg(pixels: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


def degraded_astronaut(side: int = 160) -> np.ndarray:
    """The astronaut's photo shrunk to `side` px, blurred and saved as a poor JPEG: a face of about 27 px."""
    small = cv2.resize(astronaut(), (side, side), interpolation=cv2.INTER_AREA)
    return _jpeg(cv2.GaussianBlur(small, (0, 0), 1.0), 30)


def degraded_group() -> np.ndarray:
    """Eileen Collins and Grace Hopper side by side, shrunk four times, blurred and saved as a poor JPEG."""
    left, _ = place(astronaut(), 0, 0.9, (260, 280), canvas=(1040, 560))
    right, _ = place(grace_hopper(), 0, 0.75, (780, 280), canvas=(1040, 560))
    scene = left.copy()
    scene[:, 520:] = right[:, 520:]
    return degrade(scene, 4, sigma=1.5, quality=35)


@pytest.fixture(scope="module")
def cascade():
    return DlibCascade()


@pytest.fixture(scope="module")
def hog(cascade):
    return DlibDetector("hog", shape_predictor=cascade.shape_predictor)


def test_the_cascade_finds_the_faces_hog_alone_misses(cascade, hog):
    for side in (128, 160, 200):
        photo = degraded_astronaut(side)
        assert detect_faces(photo, hog) == []
        (face,) = detect_faces(photo, cascade)
        x0, y0, x1, y1 = face.box
        truth = np.array([220, 121]) * side / 512  # the face's centre in the original photo, scaled
        assert np.hypot((x0 + x1) / 2 - truth[0], (y0 + y1) / 2 - truth[1]) < 0.25 * (x1 - x0)
    group = degraded_group()
    assert len(detect_faces(group, hog)) == 1
    assert len(detect_faces(group, cascade)) == 2  # the small face of a group photo is not lost


def test_the_first_stage_that_finds_ends_the_search(cascade, monkeypatch):
    face = DetectedFace((10.0, 10.0, 50.0, 50.0), 1.0, np.tile([[30.0, 30.0]], (68, 1)))
    ran = []
    stages = [(name, lambda name=name, found=found: ran.append(name) or found)
              for name, found in (("HOG", []), ("tiles", []), ("rotated", [face]), ("CNN", [face]))]  # fmt: skip
    monkeypatch.setattr(cascade, "stages", lambda photo: stages)
    assert cascade.search(np.zeros((40, 40, 3), np.uint8)) == [face]
    assert ran == ["HOG", "tiles", "rotated"]


def test_tiles_cover_the_photo_and_a_face_on_a_border_is_kept_once():
    for height, width in ((600, 20000), (9000, 9000), (300, 500)):
        covered = np.zeros((height // 10 + 1, width // 10 + 1), bool)
        for top, left, bottom, right in tiles(height, width):
            assert bottom - top <= 1024 and right - left <= 1024
            covered[top // 10 : bottom // 10, left // 10 : right // 10] = True
        assert covered[: height // 10, : width // 10].all()

    photo = np.zeros((1000, 3000, 3), np.uint8)

    def finds_the_square(window: np.ndarray) -> list[DetectedFace]:
        ys, xs = np.nonzero(window[..., 0])
        if len(xs) < 90 * 90:  # only where the whole face lies in the window
            return []
        box = (float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max()))
        return [DetectedFace(box, 1.0, np.tile([[box[0], box[1]]], (68, 1)))]

    photo[400:490, 880:970] = 255  # inside the overlap of the first two tiles
    (found,) = detect_tiled(photo, finds_the_square)
    assert found.box == (880.0, 400.0, 969.0, 489.0)
    duplicates = [DetectedFace((0, 0, 10, 10), 0.5, None), DetectedFace((1, 1, 11, 11), 0.9, None)]
    assert suppress_overlaps(duplicates) == [duplicates[1]]


@pytest.mark.slow
def test_a_90_px_face_in_a_panorama_is_found(cascade):
    panorama = np.full((600, 20000, 3), 110, np.uint8)
    panorama[100:500, 14000:14400] = astronaut()[0:400, 20:420]  # its face is 90 px wide
    assert detect_faces(panorama, DlibDetector("hog")) == []  # the whole photo shrunk to 1600 px loses it
    (found,) = detect_faces(panorama, cascade)
    assert 14000 < found.box[0] < found.box[2] < 14400 and 60 < found.width < 140


def test_faces_seen_but_not_restored_are_named_with_where_they_are(cascade):
    group = degraded_group()
    search = find_faces(group, cascade, "largest", source="group.jpg")
    assert len(search.faces) == 1 and [face.reason for face in search.dropped] == [
        "not the largest (choose with --face)"
    ]
    assert search.notes[0].startswith("group.jpg: 2 faces found; 1 not restored, not the largest (choose with --face)")
    assert all(landmarks_fit(face) for face in detect_faces(group, cascade))
    misfit = DetectedFace((0.0, 0.0, 40.0, 40.0), 1.0, np.tile([[200.0, 200.0]], (68, 1)) + np.arange(68)[:, None])
    assert not landmarks_fit(misfit)


@pytest.mark.slow
def test_the_degraded_photos_restore_every_face_with_the_default_settings(tmp_path, tiny_models, capsys):
    Image.fromarray(degraded_astronaut()).save(tmp_path / "astronaut_lq.jpg", quality=95)
    reference = tmp_path / "astronaut_ref.png"
    Image.fromarray(astronaut()).save(reference)
    model = ["--model", str(tiny_models["refldm"]), "--steps", "2", "-q"]
    assert main(["restore", str(tmp_path / "astronaut_lq.jpg"), "--ref", str(reference), "-o", str(tmp_path / "one"),
                 *model]) == 0  # fmt: skip
    assert (tmp_path / "one" / "restored_imgs" / "astronaut_lq.jpg").is_file()

    Image.fromarray(degraded_group()).save(tmp_path / "group.jpg", quality=95)
    album = write_album(tmp_path / "album")
    code = main(["restore", str(tmp_path / "group.jpg"), "--refs-dir", str(album), "-o", str(tmp_path / "group"),
                 *model])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    with open(tmp_path / "group" / "report.csv", newline="", encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    assert [(row["face"], row["status"]) for row in rows] == [("0", "restored"), ("1", "restored")]

    code = main(["restore", str(tmp_path / "group.jpg"), "--refs-dir", str(album), "-o", str(tmp_path / "largest"),
                 "--face", "largest", *model])  # fmt: skip
    assert code == 0
    with open(tmp_path / "largest" / "report.csv", newline="", encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    assert [(row["face"], row["status"]) for row in rows] == [("0", "restored"), ("", "skipped")]
    assert rows[1]["message"].startswith("the face at (") and rows[1]["message"].endswith(
        "not the largest (choose with --face)"
    )
