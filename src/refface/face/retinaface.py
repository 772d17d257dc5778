"""The learned face detector: RetinaFace (ResNet-50, trained on WIDER FACE), the detector of facexlib and so of
GFPGAN and CodeFormer.

WIDER FACE's hard split is small, blurred and occluded faces: what old photos hold and dlib's detectors miss.
This module turns the network's per-anchor outputs into faces: anchors (two square sizes per position at
strides 8, 16 and 32), the decoding of boxes and five points (variances 0.1 and 0.2), a score threshold and
non-maximum suppression, and images taken in batches (video frames on a GPU). Each face's five points give it
68 landmarks (`refface.face.five_points`) that the 68-point model refines, so faces align as the released
ReF-LDM was trained.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from refface.face.detection import DetectedFace, DlibDetector, load_shape_predictor
from refface.face.five_points import landmarks_from_five
from refface.face.search import detect_rotated, detect_tiled, scaled, shrunk
from refface.models.checkpoints import load_converted, read_state_dict
from refface.models.retinaface import RetinaFace
from refface.weights import WeightFile

RETINAFACE_WEIGHTS = WeightFile(
    "detection_Resnet50_Final.pth",
    "https://github.com/xinntao/facexlib/releases/download/v0.1.0/detection_Resnet50_Final.pth",
    "6d1de9c2944f2ccddca5f5e010ea5ae64a39845a86311af6fdf30841b0a5a16d",
    "MIT licence (Pytorch_Retinaface, as released with facexlib)",
)
LEVELS = ((8, (16, 32)), (16, (64, 128)), (32, (256, 512)))  # (stride, anchor sides in pixels) per level
CENTRE_VARIANCE, SIZE_VARIANCE = 0.1, 0.2
BGR_MEAN = (104.0, 117.0, 123.0)  # the network reads BGR pixels minus this mean, unscaled
MIN_SCORE = 0.8
NMS_OVERLAP = 0.4
WHOLE_SIDE = 1280  # photos are searched whole at most this large (faces from about 12 px of this copy)
TILE_FACTOR = 0.5  # larger photos: then tiles of a half-size copy (faces from about 24 px of the photo)


def anchors(height: int, width: int) -> torch.Tensor:
    """[A, 3] (centre x, centre y, side) in pixels of every anchor of an image this large, in the network's
    output order: level by level, row by row, the anchor sides of each position in turn."""
    rows = []
    for stride, sides in LEVELS:
        ys, xs = torch.meshgrid(
            (torch.arange(-(-height // stride), dtype=torch.float64) + 0.5) * stride,
            (torch.arange(-(-width // stride), dtype=torch.float64) + 0.5) * stride,
            indexing="ij",
        )
        centres = torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1).repeat_interleave(len(sides), dim=0)
        side = torch.tensor(sides, dtype=torch.float64).repeat(xs.numel())
        rows.append(torch.cat([centres, side[:, None]], dim=1))
    return torch.cat(rows).float()


def decode(offsets: torch.Tensor, points: torch.Tensor, grid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes [..., A, 4] (left, top, right, bottom) and five points [..., A, 5, 2] in pixels, from the network's
    box offsets [..., A, 4] and point offsets [..., A, 10] relative to the anchors `grid` [A, 3]."""
    centre, side = grid[:, :2], grid[:, 2:]
    box_centre = centre + offsets[..., :2] * CENTRE_VARIANCE * side
    box_size = side * torch.exp(offsets[..., 2:] * SIZE_VARIANCE)
    boxes = torch.cat([box_centre - box_size / 2, box_centre + box_size / 2], dim=-1)
    five = centre[:, None, :] + points.unflatten(-1, (5, 2)) * CENTRE_VARIANCE * side[:, None, :]
    return boxes, five


def suppress(boxes: np.ndarray, scores: np.ndarray, overlap: float = NMS_OVERLAP) -> np.ndarray:
    """Indices of the boxes kept by greedy non-maximum suppression, best score first (OpenCV's)."""
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    rects = [(float(x0), float(y0), float(x1 - x0), float(y1 - y0)) for x0, y0, x1, y1 in boxes]
    kept = cv2.dnn.NMSBoxes(rects, [float(s) for s in scores], 0.0, overlap)
    return np.asarray(kept, dtype=np.int64).reshape(-1)


@dataclass(frozen=True)
class FoundFaces:
    """The faces in one image: boxes [N, 4], scores [N] and five points [N, 5, 2], best score first."""

    boxes: np.ndarray
    scores: np.ndarray
    points: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)


def load_retinaface(path: str | Path) -> RetinaFace:
    """The network with the weights of `path` (the released `detection_Resnet50_Final.pth`, or any state dict
    of its layout, saved from DataParallel or not); anything else is one sentence naming the file."""
    state = read_state_dict(path, "RetinaFace weights")
    network = RetinaFace()
    load_converted(network, {key.removeprefix("module."): value for key, value in state.items()}, path)
    return network.eval()


class RetinaFaceDetector:
    """RetinaFace as a `FaceDetector`: `find` for raw faces of a batch of images, `detect` for one image,
    `search(photo)` for a whole photo (a bounded copy, tiles of large photos, rotated copies in turn) and
    `search_many` for video frames, batched."""

    name = "retinaface"

    def __init__(
        self,
        network: RetinaFace,
        device: str | torch.device = "cpu",
        min_score: float = MIN_SCORE,
        shape_predictor=None,
        batch_size: int = 4,
    ) -> None:
        self.device = torch.device(device)
        self.network = network.to(self.device).eval()
        self.min_score = min_score
        self.batch_size = batch_size
        self.shape_predictor = shape_predictor or load_shape_predictor()
        self._landmarks = DlibDetector("hog", 1, 0.3, self.shape_predictor)

    @torch.inference_mode()
    def find(self, images: Sequence[np.ndarray]) -> list[FoundFaces]:
        """The faces of each RGB uint8 image, the images run in batches (padded to the largest at the bottom
        and right, which moves no coordinate)."""
        found: list[FoundFaces] = []
        for start in range(0, len(images), self.batch_size):
            group = images[start : start + self.batch_size]
            height, width = max(i.shape[0] for i in group), max(i.shape[1] for i in group)
            batch = torch.zeros(len(group), 3, height, width)
            for n, image in enumerate(group):
                bgr = torch.from_numpy(np.ascontiguousarray(image[..., ::-1])).float() - torch.tensor(BGR_MEAN)
                batch[n, :, : image.shape[0], : image.shape[1]] = bgr.permute(2, 0, 1)
            offsets, scores, points = self.network(batch.to(self.device))
            boxes, five = decode(offsets.float().cpu(), points.float().cpu(), anchors(height, width))
            for n in range(len(group)):
                found.append(self._kept(boxes[n], scores[n].float().cpu(), five[n]))
        return found

    def _kept(self, boxes: torch.Tensor, scores: torch.Tensor, five: torch.Tensor) -> FoundFaces:
        sure = torch.nonzero(scores > self.min_score).reshape(-1)
        boxes, scores, five = boxes[sure].numpy(), scores[sure].numpy(), five[sure].numpy()
        keep = suppress(boxes, scores)
        return FoundFaces(
            boxes[keep].astype(np.float64), scores[keep].astype(np.float64), five[keep].astype(np.float64)
        )

    def faces(self, found: FoundFaces) -> list[DetectedFace]:
        """DetectedFaces with 68 landmarks placed on their five points, largest first (`detect_faces` refines
        them with the 68-point model)."""
        faces = [
            DetectedFace(tuple(float(v) for v in box), float(score), landmarks_from_five(points), points)
            for box, score, points in zip(found.boxes, found.scores, found.points, strict=True)
        ]
        return sorted(faces, key=lambda face: face.area, reverse=True)

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        return self.faces(self.find([image])[0])

    def landmarks_in_box(self, image: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
        return self._landmarks.landmarks_in_box(image, box)

    def search(self, photo: np.ndarray) -> list[DetectedFace]:
        """The faces of a whole photo: on a copy of at most WHOLE_SIDE pixels; if none, on tiles of a half-size
        copy of a larger photo; if none, on rotated copies."""
        return self.search_many([photo])[0]

    def search_many(self, photos: Sequence[np.ndarray]) -> list[list[DetectedFace]]:
        """`search` for several photos, their whole-photo copies run as batches (video frames)."""
        copies = [shrunk(np.ascontiguousarray(photo), WHOLE_SIDE) for photo in photos]
        results = []
        for photo, (copy, factor), found in zip(photos, copies, self.find([c for c, _ in copies]), strict=True):
            faces = [scaled(face, factor) for face in self.faces(found)]
            if not faces and factor > 1.0 / TILE_FACTOR:
                half, half_factor = shrunk(photo, int(max(photo.shape[:2]) * TILE_FACTOR))
                faces = [scaled(face, half_factor) for face in detect_tiled(half, self.detect)]
            if not faces:
                faces = [scaled(face, factor) for face in detect_rotated(copy, self.detect)]
            results.append(faces)
        return results
