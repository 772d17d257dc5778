"""RetinaFace offline: the network of the released layout with random weights, its anchors, decoding, suppression,
batches and five points, and a stand-in network that "sees" known faces so the whole path to aligned crops is
checked without the released weights (the tests never download)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from refface.cli import main
from refface.errors import RefFaceError
from refface.face.cascade import DlibCascade
from refface.face.detection import DetectedFace
from refface.face.detectors import choose_detector
from refface.face.five_points import MEAN_SHAPE, agree, five_of, landmarks_from_five
from refface.face.locate import detect_faces, detect_faces_many, find_faces, refine_landmarks
from refface.face.retinaface import (
    CENTRE_VARIANCE,
    SIZE_VARIANCE,
    RetinaFaceDetector,
    anchors,
    decode,
    load_retinaface,
    suppress,
)
from refface.models.retinaface import RetinaFace
from refface.weights import DownloadFailed, WeightFile, sha256_of
from tests.face.photos import astronaut, place


@pytest.fixture(scope="module")
def cascade():
    return DlibCascade()


@pytest.fixture(scope="module")
def network() -> RetinaFace:
    torch.manual_seed(0)
    return RetinaFace().eval()


def _anchors_by_the_recipe(height: int, width: int) -> np.ndarray:
    """Pytorch_Retinaface's prior boxes as its configuration describes them (fractions of the image, position by
    position, the sizes of each position in turn), turned into pixels."""
    rows = []
    for step, sizes in ((8, (16, 32)), (16, (64, 128)), (32, (256, 512))):
        for i in range(int(np.ceil(height / step))):
            for j in range(int(np.ceil(width / step))):
                for size in sizes:
                    rows.append(((j + 0.5) * step / width * width, (i + 0.5) * step / height * height, size))
    return np.array(rows)


@pytest.mark.parametrize("size", [(64, 64), (70, 101), (333, 250)])
def test_anchors_match_the_recipe_and_the_networks_outputs(network, size):
    height, width = size
    grid = anchors(height, width)
    np.testing.assert_allclose(grid.numpy(), _anchors_by_the_recipe(height, width), rtol=0, atol=1e-4)
    with torch.no_grad():
        boxes, scores, points = network(torch.randn(2, 3, height, width))
    assert boxes.shape == (2, len(grid), 4) and scores.shape == (2, len(grid)) and points.shape == (2, len(grid), 10)
    assert torch.all((scores >= 0) & (scores <= 1))


def _encode(grid: torch.Tensor, box, five) -> tuple[torch.Tensor, torch.Tensor]:
    """The offsets that decode to `box` (left, top, right, bottom) and `five` ([5, 2]) at each anchor of `grid`."""
    box = torch.as_tensor(box, dtype=torch.float64)
    five = torch.as_tensor(np.asarray(five), dtype=torch.float64)
    grid = grid.double()
    centre, side = grid[:, :2], grid[:, 2:]
    offsets = torch.cat(
        [
            ((box[:2] + box[2:]) / 2 - centre) / (CENTRE_VARIANCE * side),
            torch.log((box[2:] - box[:2]) / side) / SIZE_VARIANCE,
        ],
        dim=1,
    )
    points = ((five[None] - centre[:, None]) / (CENTRE_VARIANCE * side[:, None])).reshape(len(grid), 10)
    return offsets.float(), points.float()


def test_decoding_inverts_the_encoding_at_every_anchor():
    grid = anchors(97, 130)
    rng = np.random.default_rng(1)
    for _ in range(3):
        x0, y0 = rng.uniform(0, 60, 2)
        box = (x0, y0, x0 + rng.uniform(10, 70), y0 + rng.uniform(10, 70))
        five = rng.uniform(0, 100, (5, 2))
        offsets, points = _encode(grid, box, five)
        boxes, decoded = decode(offsets[None].repeat(2, 1, 1), points[None].repeat(2, 1, 1), grid)
        assert boxes.shape == (2, len(grid), 4) and decoded.shape == (2, len(grid), 5, 2)
        np.testing.assert_allclose(boxes.numpy(), np.broadcast_to(box, boxes.shape), atol=2e-3)
        np.testing.assert_allclose(decoded.numpy(), np.broadcast_to(five, decoded.shape), atol=2e-3)


def test_suppression_keeps_the_best_of_each_overlapping_group():
    boxes = np.array(
        [
            [0, 0, 100, 100],  # 0.70
            [10, 0, 110, 100],  # 0.95: overlaps 0 by IoU 0.82
            [60, 0, 160, 100],  # 0.80: overlaps 1 by IoU 0.33 (kept), 0 by 0.25
            [300, 300, 320, 320],  # 0.50: alone
            [302, 300, 322, 320],  # 0.40: overlaps 3 by 0.82
        ],
        dtype=np.float64,
    )
    scores = np.array([0.7, 0.95, 0.8, 0.5, 0.4])
    assert suppress(boxes, scores).tolist() == [1, 2, 3]
    assert suppress(boxes, scores, overlap=0.3).tolist() == [1, 3]
    assert suppress(np.zeros((0, 4)), np.zeros(0)).tolist() == []


# ------------------------------------------------------------------------------------------- loading
def test_the_released_layout_loads_with_or_without_the_data_parallel_prefix(network, tmp_path):
    state = network.state_dict()
    plain, wrapped = tmp_path / "plain.pth", tmp_path / "wrapped.pth"
    torch.save(state, plain)
    torch.save({f"module.{k}": v for k, v in state.items()}, wrapped)
    images = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        expected = network(images)
        for path in (plain, wrapped):
            for got, want in zip(load_retinaface(path)(images), expected, strict=True):
                assert torch.equal(got, want)


def test_a_wrong_file_is_one_sentence_naming_it(network, tmp_path):
    state = network.state_dict()
    missing = dict(state)
    del missing["fpn.merge1.0.weight"]
    shaped = dict(state)
    shaped["ClassHead.0.conv1x1.weight"] = torch.zeros(6, 256, 1, 1)
    extra = {**state, "body.fc.weight": torch.zeros(1000, 2048)}
    cases = {
        "missing.pth": (missing, r"missing\.pth have the wrong shapes .*fpn\.merge1\.0\.weight"),
        "shaped.pth": (shaped, r"shaped\.pth have the wrong shapes .*ClassHead\.0\.conv1x1\.weight"),
        "extra.pth": (extra, r"extra\.pth have the wrong shapes .*body\.fc\.weight"),
        "list.pth": ([1, 2], r"list\.pth is not a state dict of tensors"),
    }
    for name, (content, message) in cases.items():
        torch.save(content, tmp_path / name)
        with pytest.raises(RefFaceError, match=message):
            load_retinaface(tmp_path / name)
    (tmp_path / "text.pth").write_text("not weights")
    with pytest.raises(RefFaceError, match=r"text\.pth is not a readable PyTorch checkpoint"):
        load_retinaface(tmp_path / "text.pth")
    with pytest.raises(RefFaceError, match=r"The RetinaFace weights file .*absent\.pth does not exist"):
        load_retinaface(tmp_path / "absent.pth")


# ------------------------------------------------------------------------------------------- five points
def test_five_points_give_68_landmarks_whose_alignment_is_theirs():
    rng = np.random.default_rng(2)
    for _ in range(4):
        angle, scale, shift = rng.uniform(-0.8, 0.8), rng.uniform(40, 400), rng.uniform(0, 500, 2)
        rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        truth = MEAN_SHAPE @ rotation.T + shift
        five = five_of(truth) + rng.normal(0, scale * 0.01, (5, 2))
        landmarks = landmarks_from_five(five)
        assert landmarks.shape == (68, 2)
        placed = five_of(landmarks)
        np.testing.assert_allclose(placed[[0, 1, 3, 4]], five[[0, 1, 3, 4]], atol=1e-9)  # what FFHQ aligns by
        assert np.abs(landmarks - truth).max() < scale * 0.06  # the rest follows the face
        assert agree(landmarks, five) and agree(truth, five)
        moved = truth + [0.5 * scale * 0.25, 0]  # half an eye distance (a quarter of the crop) off
        assert not agree(moved, five)


class _FixedLandmarks:
    """A detector whose 68-point model always answers `landmarks` (as one that cannot read the face would)."""

    def __init__(self, landmarks: np.ndarray) -> None:
        self.landmarks = landmarks

    def landmarks_in_box(self, image, box):
        return self.landmarks


def test_refinement_keeps_the_five_points_where_the_68_disagree():
    photo = np.random.default_rng(3).integers(0, 255, (300, 300, 3), dtype=np.uint8)
    five = five_of(MEAN_SHAPE * 120 + 90)
    face = DetectedFace((90, 90, 210, 210), 0.99, landmarks_from_five(five), five)
    canonical = MEAN_SHAPE * 256  # the 68 on the upright crop, where the five points put the face
    kept = refine_landmarks(photo, face, _FixedLandmarks(canonical))
    assert not kept.from_points and agree(kept.landmarks, five)
    far = refine_landmarks(photo, face, _FixedLandmarks(canonical + [90, 0]))
    assert far.from_points
    np.testing.assert_allclose(far.landmarks, landmarks_from_five(five))


# ------------------------------------------------------------------------------------------- a stand-in network
class _SeeingNetwork(nn.Module):
    """RetinaFace's outputs for known faces: for each image of the batch, `faces(height, width, index)` gives
    (box, five points) in the image's pixels; each is answered at its best anchor (score 0.97) and again, shifted,
    at the next best (score 0.9, which suppression must drop); every other anchor scores 0.01."""

    def __init__(self, faces) -> None:
        super().__init__()
        self.faces = faces
        self.calls: list[tuple[int, ...]] = []

    def forward(self, images: torch.Tensor):
        batch, _, height, width = images.shape
        self.calls.append(tuple(images.shape))
        grid = anchors(height, width)
        offsets, points = torch.zeros(batch, len(grid), 4), torch.zeros(batch, len(grid), 10)
        scores = torch.full((batch, len(grid)), 0.01)
        for n in range(batch):
            for box, five in self.faces(images[n]):
                centre = torch.tensor([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])
                cost = (grid[:, :2] - centre).abs().sum(1) + (grid[:, 2] - (box[2] - box[0])).abs()
                best, second = torch.topk(-cost, 2).indices.tolist()
                shifted = (box[0] + 3, box[1] + 2, box[2] + 3, box[3] + 2)
                for index, (b, score) in ((best, (box, 0.97)), (second, (shifted, 0.9))):
                    o, p = _encode(grid[index : index + 1], b, five)
                    offsets[n, index], points[n, index], scores[n, index] = o[0], p[0], score
        return offsets, scores, points


def _white_square(image: torch.Tensor):
    """The box of an image's white square (BGR minus the mean: every channel well above 0), five points inside."""
    ys, xs = torch.nonzero((image > 100).all(dim=0), as_tuple=True)
    if len(xs) == 0:
        return []
    box = (float(xs.min()), float(ys.min()), float(xs.max()) + 1, float(ys.max()) + 1)
    side = box[2] - box[0]
    return [(box, five_of(MEAN_SHAPE) * side / 0.55 + [box[0] - 0.22 * side / 0.55, box[1] - 0.32 * side / 0.55])]


def test_images_of_different_sizes_in_one_batch_keep_their_coordinates(cascade):
    network = _SeeingNetwork(_white_square)
    detector = RetinaFaceDetector(network, batch_size=2, shape_predictor=cascade.shape_predictor)
    images, squares = [], [(30, 40, 80), (100, 20, 64), (5, 150, 50)]
    for (height, width), (top, left, side) in zip([(200, 300), (256, 256), (230, 330)], squares, strict=True):
        image = np.full((height, width, 3), 20, dtype=np.uint8)
        image[top : top + side, left : left + side] = 255
        images.append(image)
    found = detector.find(images)
    assert [shape[0] for shape in network.calls] == [2, 1]
    assert network.calls[0][2:] == (256, 300)  # the first two padded to the larger of each side
    for result, (top, left, side) in zip(found, squares, strict=True):
        assert len(result) == 1 and result.scores[0] == pytest.approx(0.97)
        np.testing.assert_allclose(result.boxes[0], [left, top, left + side, top + side], atol=0.05)
        assert result.points.shape == (1, 5, 2)


def _astronaut_answers(cascade, photo: np.ndarray):
    """The astronaut's face as the cascade finds it: the box and five points a detector should give."""
    (face,) = detect_faces(photo, cascade)
    return face.box, five_of(face.landmarks)


def test_the_five_points_lead_to_the_same_alignment_as_the_cascade(cascade):
    photo, _ = place(astronaut(), 10, 0.6, (260, 220), canvas=(520, 440))
    box, five = _astronaut_answers(cascade, photo)
    scale = {}

    def seen(image):
        factor = image.shape[-1] / photo.shape[1]
        scale["factor"] = factor
        return [(tuple(v * factor for v in box), five * factor)]

    detector = RetinaFaceDetector(_SeeingNetwork(seen), shape_predictor=cascade.shape_predictor)
    (face,) = detect_faces(photo, detector)
    assert not face.from_points and face.points is not None
    by_cascade = find_faces(photo, cascade).faces[0].quad.corners
    by_retinaface = find_faces(photo, detector).faces[0].quad.corners
    assert np.abs(by_cascade - by_retinaface).max() < 0.04 * np.hypot(*(by_cascade[3] - by_cascade[0]))


def test_video_frames_are_searched_as_one_batch(cascade):
    frames = [
        place(astronaut(), angle, 0.5, (200 + 10 * n, 180), canvas=(480, 360))[0] for n, angle in enumerate((0, 5, -5))
    ]
    truths = [_astronaut_answers(cascade, frame) for frame in frames]
    pending = list(truths)

    def seen(image):
        return [pending.pop(0)] if pending else []

    network = _SeeingNetwork(seen)
    detector = RetinaFaceDetector(network, batch_size=4, shape_predictor=cascade.shape_predictor)
    found = detect_faces_many(frames, detector)
    assert [shape[0] for shape in network.calls] == [3]
    for faces, (box, _) in zip(found, truths, strict=True):
        assert len(faces) == 1
        np.testing.assert_allclose(faces[0].box, box, atol=0.05)


def test_a_small_face_in_a_large_panorama_is_found_in_tiles_of_a_half_size_copy(cascade):
    panorama = np.full((600, 6000, 3), 20, dtype=np.uint8)
    panorama[250:290, 4500:4540] = 255  # 40 px: 8 px in the whole-photo copy, too small to see there
    shapes = []

    def at_least_12_px(image):
        shapes.append(tuple(image.shape[-2:]))
        return [(box, five) for box, five in _white_square(image) if box[2] - box[0] >= 12]

    detector = RetinaFaceDetector(_SeeingNetwork(at_least_12_px), shape_predictor=cascade.shape_predictor)
    (face,) = detector.search(panorama)
    np.testing.assert_allclose(face.box, (4500, 250, 4540, 290), atol=2.5)
    assert shapes[0] == (128, 1280)  # the whole photo first, shrunk
    assert set(shapes[1:]) == {(300, 1024)}  # then the tiles of the 3000 x 300 copy


# ------------------------------------------------------------------------------------------- choosing
def test_auto_falls_back_to_the_cascade_with_one_note_and_retinaface_says_why(tmp_path, monkeypatch):
    monkeypatch.setenv("REFFACE_CACHE", str(tmp_path))
    detector, notes = choose_detector("auto")
    assert isinstance(detector, DlibCascade)
    assert notes == [
        "the RetinaFace detector's weights are not at hand (downloads are off: REFFACE_OFFLINE is set); dlib's "
        "detectors search instead (`refface download` fetches them)."
    ]
    with pytest.raises(DownloadFailed, match="detection_Resnet50_Final.pth"):
        choose_detector("retinaface")
    with pytest.raises(RefFaceError, match="Unknown face detector 'yolo'; choose one of auto, retinaface"):
        choose_detector("yolo")


def test_auto_uses_retinaface_when_its_weights_are_cached(network, tmp_path, monkeypatch):
    weights = tmp_path / "detection_Resnet50_Final.pth"
    torch.save(network.state_dict(), weights)
    monkeypatch.setenv("REFFACE_CACHE", str(tmp_path))
    monkeypatch.setattr(
        "refface.face.retinaface.RETINAFACE_WEIGHTS",
        WeightFile(weights.name, "http://127.0.0.1:9/none", sha256_of(weights), "test"),
    )
    detector, notes = choose_detector("auto")
    assert isinstance(detector, RetinaFaceDetector) and notes == []
    photo = np.random.default_rng(4).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    for face in detector.detect(photo):  # random weights: whatever it finds is well formed
        assert face.points.shape == (5, 2) and face.landmarks.shape == (68, 2) and face.score > detector.min_score


def test_the_command_line_names_the_missing_detector_in_one_sentence(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("REFFACE_CACHE", str(tmp_path))
    photo = tmp_path / "photo.png"
    from PIL import Image

    Image.fromarray(astronaut()).save(photo)
    assert main(["align", str(photo), "--detector", "retinaface", "--output", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "detection_Resnet50_Final.pth" in err[0] and "Traceback" not in err[0]


class _SureDetector:
    """A detector that gives one face aligned from its five points (and no 68-point model to refine it)."""

    def __init__(self, face: DetectedFace) -> None:
        self.face = face

    def search(self, photo):
        return [self.face]


def test_a_face_aligned_from_its_five_points_says_so():
    photo = np.random.default_rng(5).integers(0, 255, (300, 300, 3), dtype=np.uint8)
    five = five_of(MEAN_SHAPE * 120 + 90)
    face = DetectedFace((90, 90, 210, 210), 0.99, landmarks_from_five(five), five, from_points=True)
    search = find_faces(photo, _SureDetector(face), source="scan.png")
    assert len(search.faces) == 1
    assert search.notes == [
        "scan.png: face 0: the 68-point model could not read it; aligned from the detector's five points."
    ]
