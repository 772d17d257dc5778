"""refface's FaceNet (Inception-ResNet-v1) against facenet-pytorch's, on real faces, with the same state dict.

    pip install --no-deps facenet-pytorch      # in a side environment with torch
    python benchmarks/compare_facenet.py [--weights 20180402-114759-vggface2.pt]

Without --weights, facenet-pytorch's network gets random weights, its batch-norm statistics set by passes over
the faces; the same state dict is then loaded by refface. Both embed the FFHQ-aligned faces of the two
public-domain photos, their mirror images and a degraded copy of each (refface's preprocessing for both); the
script prints the largest difference of the embeddings and of the identity similarities between the faces.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.face.photos import astronaut, degrade, grace_hopper, mirror  # noqa: E402

from refface.face.cascade import DlibCascade  # noqa: E402
from refface.face.facenet import FaceNetEmbedder, load_facenet  # noqa: E402
from refface.face.locate import find_faces  # noqa: E402


def _faces() -> torch.Tensor:
    """Aligned 512 px faces in [0, 1]: each photo, its mirror image and a degraded copy."""
    detector = DlibCascade()
    crops = []
    for photo in (astronaut(), grace_hopper()):
        for version in (photo, mirror(photo), degrade(photo, 4)):
            crops.append(find_faces(np.asarray(version), detector, "largest", 512).faces[0].image)
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, help="facenet-pytorch's 20180402-114759-vggface2.pt (default: random)")
    args = parser.parse_args()
    from facenet_pytorch import InceptionResnetV1 as Reference

    faces = _faces()
    torch.manual_seed(0)
    reference = Reference(pretrained=None, classify=False)
    if args.weights is not None:
        state = torch.load(args.weights, map_location="cpu", weights_only=True)
        reference.load_state_dict({k: v for k, v in state.items() if not k.startswith("logits.")})
    else:
        for module in reference.modules():
            if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                module.momentum = None  # a plain average over the calibration pass
        with torch.no_grad():
            reference.train()(FaceNetEmbedder(torch.nn.Identity()).eval()(faces))
    reference.eval()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "facenet.pt"
        torch.save(reference.state_dict(), path)
        ours = FaceNetEmbedder(load_facenet(path))
    with torch.no_grad():
        expected = reference(FaceNetEmbedder(torch.nn.Identity())(faces))
        got = ours(faces)
    similarity_expected, similarity_got = expected @ expected.T, got @ got.T
    print(f"weights: {args.weights or 'random (batch-norm statistics from the faces)'}; {len(faces)} faces")
    print(f"embeddings max |diff| {(expected - got).abs().max().item():.2e}")
    print(f"pairwise cosine similarities max |diff| {(similarity_expected - similarity_got).abs().max().item():.2e}")
    print(f"similarities (facenet-pytorch) range {similarity_expected.min().item():.3f} to 1")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
