"""FaceNet (Inception-ResNet-v1, VGGFace2) as a second identity model for evaluation, beside ArcFace.

The Composite-Context paper reports a FaceNet similarity next to ArcFace's IDS. The weights are those
facenet-pytorch releases, downloaded on first use with their SHA-256 and loaded into refface's own network
(`refface.models.inception_resnet_v1`). FaceNet was trained on tight face crops (MTCNN boxes) at 160 px, while
restorations are FFHQ-aligned crops with hair and background; so the face square around the FFHQ face box is
cut out, resized to 160 px and standardised as FaceNet's training did ((pixel - 127.5) / 128).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from refface.models.checkpoints import load_converted, read_state_dict
from refface.models.inception_resnet_v1 import INPUT_SIZE, InceptionResnetV1
from refface.weights import WeightFile, ensure_weights

FACENET_WEIGHTS = WeightFile(
    "20180402-114759-vggface2.pt",
    "https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/20180402-114759-vggface2.pt",
    "281cebca8662831adb987a874bdcb36e73f5b1c6dc5ee5878f305e985625d99b",
    "MIT licence (facenet-pytorch; converted from David Sandberg's facenet)",
)
# The face square of an FFHQ-aligned crop (left, top, right, bottom as fractions of its side): dlib's face box
# there (refface.face.locate.CANONICAL_BOX) widened to a square that holds brows to chin, as MTCNN boxes do.
FACE_SQUARE = (0.2, 0.28, 0.8, 0.88)


def load_facenet(path: str | Path) -> InceptionResnetV1:
    """The network with the weights of `path` (facenet-pytorch's released state dict, whose VGGFace2 classifier
    `logits.*` embeddings do not need, or any state dict of its layout)."""
    state = read_state_dict(path, "FaceNet weights")
    network = InceptionResnetV1()
    load_converted(network, {k: v for k, v in state.items() if not k.startswith("logits.")}, path)
    return network.eval()


class FaceNetEmbedder(nn.Module):
    """FFHQ-aligned faces [B, 3, H, W] in [0, 1] -> unit FaceNet embeddings [B, 512]."""

    def __init__(self, network: InceptionResnetV1) -> None:
        super().__init__()
        self.network = network.eval()

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        side = faces.shape[-1]
        left, top, right, bottom = (round(v * side) for v in FACE_SQUARE)
        square = faces[..., top:bottom, left:right]
        square = F.interpolate(square, size=(INPUT_SIZE, INPUT_SIZE), mode="area")
        return self.network((square * 255.0 - 127.5) / 128.0)


def default_facenet(device: str | torch.device | None = None) -> FaceNetEmbedder:
    """FaceNet with the released VGGFace2 weights, downloaded and verified on first use."""
    embedder = FaceNetEmbedder(load_facenet(ensure_weights(FACENET_WEIGHTS)))
    return embedder if device is None else embedder.to(device)
