"""ArcFace's network: the insightface IResNet in plain PyTorch, and the embedder with ReF-LDM's preprocessing.

The module and parameter names are those of insightface's `arcface_torch` backbones, so their state dicts load
as they are; reading weight files (`.pth` and insightface `.onnx`) is `refface.face.arcface`'s job.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from refface.errors import RefFaceError

BN_EPS = 1e-5
EMBEDDING_SIZE = 512
INPUT_SIZE = 112
STAGE_WIDTHS = (64, 128, 256, 512)
# ReF-LDM's IdentityLoss keeps pixels int(H * 0.0625) .. int(H * 0.9375) of each side of a face crop.
CROP = (0.0625, 0.9375)
# Block counts of the arcface_torch backbones (recognition/arcface_torch/backbones/iresnet.py).
ARCHITECTURES = (
    ("r18", (2, 2, 2, 2)),
    ("r34", (3, 4, 6, 3)),
    ("r50", (3, 4, 14, 3)),
    ("r100", (3, 13, 30, 3)),
)


# ----------------------------------------------------------------------------------------------- network
def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """Pre-activation residual block of arcface_torch: BN -> conv -> BN -> PReLU -> conv(stride) -> BN, + shortcut."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=BN_EPS)
        self.conv1 = _conv3x3(inplanes, planes)
        self.bn2 = nn.BatchNorm2d(planes, eps=BN_EPS)
        self.prelu = nn.PReLU(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes, eps=BN_EPS)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        identity = x if self.downsample is None else self.downsample(x)
        return out + identity


class IResNet(nn.Module):
    """arcface_torch's IResNet for 112x112 RGB faces in [-1, 1]; returns the raw (unnormalised) 512-d feature.

    The module and parameter names are those of insightface's `iresnet.py`, so its state dicts load as they are.
    """

    fc_scale = 7 * 7

    def __init__(self, layers: Sequence[int], dropout: float = 0.0, num_features: int = EMBEDDING_SIZE) -> None:
        super().__init__()
        layers = tuple(int(count) for count in layers)
        if len(layers) != 4 or min(layers) < 1:
            raise ValueError(f"IResNet needs four positive block counts, got {layers}.")
        self.layers = layers
        self.inplanes = STAGE_WIDTHS[0]
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes, eps=BN_EPS)
        self.prelu = nn.PReLU(self.inplanes)
        self.layer1 = self._make_layer(STAGE_WIDTHS[0], layers[0])
        self.layer2 = self._make_layer(STAGE_WIDTHS[1], layers[1])
        self.layer3 = self._make_layer(STAGE_WIDTHS[2], layers[2])
        self.layer4 = self._make_layer(STAGE_WIDTHS[3], layers[3])
        self.bn2 = nn.BatchNorm2d(STAGE_WIDTHS[3], eps=BN_EPS)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(STAGE_WIDTHS[3] * self.fc_scale, num_features)
        # Frozen at weight 1 in training upstream; a plain BN here so that every released state dict loads.
        self.features = nn.BatchNorm1d(num_features, eps=BN_EPS)

    def _make_layer(self, planes: int, blocks: int, stride: int = 2) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes, eps=BN_EPS),
            )
        modules = [IBasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        modules.extend(IBasicBlock(planes, planes) for _ in range(1, blocks))
        return nn.Sequential(*modules)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.dropout(torch.flatten(self.bn2(x), 1))
        return self.features(self.fc(x))


def iresnet(arch: str | Sequence[int]) -> IResNet:
    """An untrained IResNet by name ('r18', 'r34', 'r50', 'r100') or by its four block counts."""
    return IResNet(layers_of(arch))


def iresnet50() -> IResNet:
    """arcface_torch's iresnet50 (blocks 3, 4, 14, 3), untrained."""
    return IResNet(dict(ARCHITECTURES)["r50"])


def iresnet100() -> IResNet:
    """arcface_torch's iresnet100 (blocks 3, 13, 30, 3), untrained."""
    return IResNet(dict(ARCHITECTURES)["r100"])


def layers_of(arch: str | Sequence[int]) -> tuple[int, ...]:
    """The four block counts of an architecture name ('r50', 'iresnet100', ...) or four given counts."""
    if isinstance(arch, str):
        names = dict(ARCHITECTURES)
        key = arch.lower().removeprefix("iresnet").removeprefix("r")
        if f"r{key}" in names:
            return names[f"r{key}"]
        raise RefFaceError(
            f"Unknown ArcFace architecture {arch!r}; choose one of {', '.join(names)} or give four block counts."
        )
    layers = tuple(int(count) for count in arch)
    if len(layers) != 4 or min(layers) < 1:
        raise RefFaceError(f"An ArcFace architecture needs four positive block counts, got {layers}.")
    return layers


def arch_name(layers: Sequence[int]) -> str:
    """Block counts as messages show them: 'r50 [3, 4, 14, 3]' for a known architecture, else the list."""
    for name, counts in ARCHITECTURES:
        if tuple(layers) == counts:
            return f"{name} {list(counts)}"
    return str(list(layers))


# ---------------------------------------------------------------------------------------------- embedder
class ArcFaceEmbedder(nn.Module):
    """Identity embeddings of FFHQ-aligned face crops, preprocessed exactly as ReF-LDM's identity loss does.

    `forward` takes [B, 3, H, W] float images in [-1, 1] (any size, usually 512x512 FFHQ crops), keeps the
    central [0.0625, 0.9375] of each side (pixels int(H * 0.0625) to int(H * 0.9375), the rounding of the
    official `ldm/modules/losses/identity_loss.py`), area-resizes to 112x112 and returns L2-normalised
    [B, 512] embeddings. It is differentiable with respect to the images, so it can serve as a training loss;
    the network itself is frozen and stays in eval mode even when a parent module is put in training mode.
    """

    def __init__(self, backbone: IResNet) -> None:
        super().__init__()
        self.backbone = backbone
        self.backbone.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> ArcFaceEmbedder:
        """Keep the backbone's BatchNorm statistics fixed: the embedder is a frozen metric, never trained."""
        super().train(mode)
        self.backbone.eval()
        return self

    @property
    def layers(self) -> tuple[int, ...]:
        return self.backbone.layers

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """The official centre crop and area resize: [B, 3, H, W] in [-1, 1] -> [B, 3, 112, 112]."""
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise RefFaceError(f"ArcFace needs a [B, 3, H, W] image tensor in [-1, 1], got {shape}.")
        if not images.is_floating_point():
            raise RefFaceError(f"ArcFace needs float images in [-1, 1], got dtype {images.dtype}.")
        height, width = images.shape[-2:]
        top, bottom = int(height * CROP[0]), int(height * CROP[1])
        left, right = int(width * CROP[0]), int(width * CROP[1])
        if bottom <= top or right <= left:
            raise RefFaceError(f"Images of {height}x{width} pixels are too small for the ArcFace face crop.")
        crop = images[:, :, top:bottom, left:right]
        dtype = self.backbone.conv1.weight.dtype
        return F.interpolate(crop.to(dtype), size=(INPUT_SIZE, INPUT_SIZE), mode="area")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.backbone(self.preprocess(images)), dim=1)

    def similarity(self, images_a: torch.Tensor, images_b: torch.Tensor) -> torch.Tensor:
        """Per-pair cosine similarity of two image batches: ReF-LDM's IDS metric is this, averaged."""
        return cosine_similarity(self(images_a), self(images_b))


def cosine_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity along the last axis; for embeddings from `ArcFaceEmbedder` it is a plain dot product."""
    return F.cosine_similarity(a, b, dim=-1)
