"""FaceNet's Inception-ResNet-v1 in plain PyTorch, with the module names of facenet-pytorch's released weights.

The Composite-Context paper reports a second identity similarity with FaceNet next to ArcFace. The VGGFace2
weights facenet-pytorch releases (`20180402-114759-vggface2.pt`, converted from David Sandberg's facenet) load
into this network as they are: a stem of convolutions, 5 Inception-ResNet-A blocks (scaled 0.17), a reduction,
10 B blocks (0.10), a reduction, 5 C blocks (0.20) and a last C block (unscaled, without its ReLU), then average
pooling, a 512-unit bottleneck with batch norm and L2 normalisation. Every convolution of a branch is conv +
batch norm (eps 0.001) + ReLU. The released file also holds the VGGFace2 classifier (`logits`), which
embeddings do not use.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

EMBEDDING = 512
INPUT_SIZE = 160


class BasicConv2d(nn.Module):
    """Convolution without bias, batch norm, ReLU."""

    def __init__(self, inputs: int, outputs: int, kernel, stride: int = 1, padding=0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(inputs, outputs, kernel, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(outputs, eps=0.001, momentum=0.1)
        self.relu = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


def _chain(*layers: tuple) -> nn.Sequential:
    return nn.Sequential(*(BasicConv2d(*layer) for layer in layers))


class _Residual(nn.Module):
    """An Inception-ResNet block: branches concatenated, a 1x1 projection (with bias) scaled and added."""

    def __init__(self, channels: int, branch_width: int, scale: float, relu: bool = True) -> None:
        super().__init__()
        self.scale, self.relu = scale, nn.ReLU(inplace=False) if relu else None
        self.conv2d = nn.Conv2d(branch_width, channels, 1)

    def branches(self, x: torch.Tensor) -> list[torch.Tensor]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2d(torch.cat(self.branches(x), dim=1)) * self.scale + x
        return self.relu(out) if self.relu is not None else out


class Block35(_Residual):
    """Inception-ResNet-A on 256 channels (35x35 in the original 299 px network)."""

    def __init__(self, scale: float = 0.17) -> None:
        super().__init__(256, 96, scale)
        self.branch0 = BasicConv2d(256, 32, 1)
        self.branch1 = _chain((256, 32, 1), (32, 32, 3, 1, 1))
        self.branch2 = _chain((256, 32, 1), (32, 32, 3, 1, 1), (32, 32, 3, 1, 1))

    def branches(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.branch0(x), self.branch1(x), self.branch2(x)]


class Block17(_Residual):
    """Inception-ResNet-B on 896 channels, its 7x7 as 1x7 then 7x1."""

    def __init__(self, scale: float = 0.10) -> None:
        super().__init__(896, 256, scale)
        self.branch0 = BasicConv2d(896, 128, 1)
        self.branch1 = _chain((896, 128, 1), (128, 128, (1, 7), 1, (0, 3)), (128, 128, (7, 1), 1, (3, 0)))

    def branches(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.branch0(x), self.branch1(x)]


class Block8(_Residual):
    """Inception-ResNet-C on 1792 channels, its 3x3 as 1x3 then 3x1; the network's last one is unscaled and has
    no ReLU."""

    def __init__(self, scale: float = 0.20, relu: bool = True) -> None:
        super().__init__(1792, 384, scale, relu)
        self.branch0 = BasicConv2d(1792, 192, 1)
        self.branch1 = _chain((1792, 192, 1), (192, 192, (1, 3), 1, (0, 1)), (192, 192, (3, 1), 1, (1, 0)))

    def branches(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.branch0(x), self.branch1(x)]


class Mixed6a(nn.Module):
    """Reduction A: 256 -> 896 channels at half the resolution."""

    def __init__(self) -> None:
        super().__init__()
        self.branch0 = BasicConv2d(256, 384, 3, 2)
        self.branch1 = _chain((256, 192, 1), (192, 192, 3, 1, 1), (192, 256, 3, 2))
        self.branch2 = nn.MaxPool2d(3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch0(x), self.branch1(x), self.branch2(x)], dim=1)


class Mixed7a(nn.Module):
    """Reduction B: 896 -> 1792 channels at half the resolution."""

    def __init__(self) -> None:
        super().__init__()
        self.branch0 = _chain((896, 256, 1), (256, 384, 3, 2))
        self.branch1 = _chain((896, 256, 1), (256, 256, 3, 2))
        self.branch2 = _chain((896, 256, 1), (256, 256, 3, 1, 1), (256, 256, 3, 2))
        self.branch3 = nn.MaxPool2d(3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)], dim=1)


class InceptionResnetV1(nn.Module):
    """Face images [B, 3, 160, 160] standardised as (pixel - 127.5) / 128 -> unit embeddings [B, 512]."""

    def __init__(self) -> None:
        super().__init__()
        self.conv2d_1a = BasicConv2d(3, 32, 3, 2)
        self.conv2d_2a = BasicConv2d(32, 32, 3)
        self.conv2d_2b = BasicConv2d(32, 64, 3, 1, 1)
        self.maxpool_3a = nn.MaxPool2d(3, stride=2)
        self.conv2d_3b = BasicConv2d(64, 80, 1)
        self.conv2d_4a = BasicConv2d(80, 192, 3)
        self.conv2d_4b = BasicConv2d(192, 256, 3, 2)
        self.repeat_1 = nn.Sequential(*(Block35() for _ in range(5)))
        self.mixed_6a = Mixed6a()
        self.repeat_2 = nn.Sequential(*(Block17() for _ in range(10)))
        self.mixed_7a = Mixed7a()
        self.repeat_3 = nn.Sequential(*(Block8() for _ in range(5)))
        self.block8 = Block8(scale=1.0, relu=False)
        self.avgpool_1a = nn.AdaptiveAvgPool2d(1)
        self.last_linear = nn.Linear(1792, EMBEDDING, bias=False)
        self.last_bn = nn.BatchNorm1d(EMBEDDING, eps=0.001, momentum=0.1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.conv2d_2b(self.conv2d_2a(self.conv2d_1a(images)))
        x = self.conv2d_4b(self.conv2d_4a(self.conv2d_3b(self.maxpool_3a(x))))
        x = self.mixed_7a(self.repeat_2(self.mixed_6a(self.repeat_1(x))))
        x = self.avgpool_1a(self.block8(self.repeat_3(x))).flatten(1)
        return F.normalize(self.last_bn(self.last_linear(x)), p=2, dim=1)
