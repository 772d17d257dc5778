"""refface's RetinaFace against facexlib's (the reference implementation GFPGAN and CodeFormer use), on real photos.

    pip install facexlib torchvision     # in a side environment (see docs/photos.md for the pairs that install)
    python benchmarks/compare_retinaface.py [--weights detection_Resnet50_Final.pth]

Without --weights, facexlib's network gets random weights, its batch-norm statistics set by a few passes over
the photos (so activations stay in a realistic range); the same state dict is then loaded by both. Both detect
the faces of the same photos (the two public-domain faces, a degraded two-person group photo); the script prints
the largest difference of the raw network outputs and of the final faces (boxes, scores, five points), and how
many faces each found.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.face.photos import astronaut, grace_hopper, group_photo  # noqa: E402

from refface.face.retinaface import BGR_MEAN, RetinaFaceDetector, load_retinaface  # noqa: E402


def _network_input(pixels: np.ndarray) -> torch.Tensor:
    """An RGB photo as both networks read it: [1, 3, H, W] BGR minus the mean."""
    bgr = torch.from_numpy(np.ascontiguousarray(pixels[..., ::-1])).float() - torch.tensor(BGR_MEAN)
    return bgr.permute(2, 0, 1)[None]


def _photos() -> dict[str, np.ndarray]:
    group = np.asarray(group_photo())
    return {
        "astronaut 512x512": astronaut(),
        "grace_hopper 512x600": grace_hopper(),
        f"degraded group {group.shape[1]}x{group.shape[0]}": group,
    }


def _reference_network(weights: Path | None, photos: dict[str, np.ndarray]):
    from facexlib.detection.retinaface import RetinaFace as Reference

    torch.manual_seed(0)
    reference = Reference(network_name="resnet50", half=False, phase="test", device="cpu")
    if weights is not None:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        reference.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
    else:
        for module in reference.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.reset_running_stats()
                module.momentum = None  # a plain average over the calibration passes
        reference.train()
        with torch.no_grad():
            for pixels in photos.values():
                reference(_network_input(pixels))
    return reference.eval()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, help="the released detection_Resnet50_Final.pth (default: random)")
    parser.add_argument("--min-score", type=float, help="score threshold of both (default: 0.8, random: 0.5)")
    args = parser.parse_args()
    photos = _photos()
    reference = _reference_network(args.weights, photos)
    min_score = args.min_score if args.min_score is not None else (0.8 if args.weights else 0.5)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "weights.pth"
        torch.save(reference.state_dict(), path)
        ours = RetinaFaceDetector(load_retinaface(path), min_score=min_score)
    print(f"weights: {args.weights or 'random (batch-norm statistics from the photos)'}; min score {min_score}")
    for name, pixels in photos.items():
        bgr = np.ascontiguousarray(pixels[..., ::-1])
        tensor = _network_input(pixels)
        with torch.no_grad():
            loc, conf, landmarks = reference(tensor)
            boxes, scores, points = ours.network(tensor)
        raw = max(
            (loc - boxes).abs().max().item(),
            (conf[..., 1] - scores).abs().max().item(),
            (landmarks - points).abs().max().item(),
        )
        with torch.no_grad():
            expected = reference.detect_faces(bgr, conf_threshold=min_score, nms_threshold=0.4)
        (found,) = ours.find([pixels])
        line = f"{name}: raw outputs max |diff| {raw:.2e}; faces: facexlib {len(expected)}, refface {len(found)}"
        if len(expected) == len(found) and len(found):
            mine = np.concatenate([found.boxes, found.scores[:, None], found.points.reshape(-1, 10)], axis=1)
            # compared as sets: random weights give many faces of equal score, which the two order differently
            expected, mine = (a[np.lexsort(np.round(a, 2).T[::-1])] for a in (expected[:, :15], mine))
            box = np.abs(expected[:, :4] - mine[:, :4]).max()
            score = np.abs(expected[:, 4] - mine[:, 4]).max()
            five = np.abs(expected[:, 5:] - mine[:, 5:]).max()
            line += f"; max |diff| boxes {box:.2e} px, scores {score:.2e}, five points {five:.2e} px"
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
