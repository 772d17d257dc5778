"""RetinaFace with a ResNet-50 backbone, the face detector of facexlib (GFPGAN, CodeFormer), in plain PyTorch.

The module names follow the released `detection_Resnet50_Final.pth` (trained on WIDER FACE by the
Pytorch_Retinaface project), so its state dict loads as it is: `body` (torchvision's ResNet-50 up to layer4,
whose layers 2-4 feed the pyramid), `fpn` (three 1x1 lateral convolutions and two 3x3 merges, nearest
upsampling), `ssh1-3` (the context modules: 3x3, 5x5 and 7x7 receptive fields as stacked 3x3 convolutions), and
one 1x1 head per level for the face score (2 per anchor), the box (4) and the five landmarks (10), two anchors
per position. The forward pass returns the raw per-anchor outputs; `refface.face.retinaface` turns them into
faces.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ANCHORS_PER_POSITION = 2
FEATURES = 256


def _conv_bn(inputs: int, outputs: int, kernel: int = 3, stride: int = 1, relu: bool = True) -> nn.Sequential:
    """Conv (no bias) + BatchNorm (+ ReLU): the `conv_bn` blocks of the released model (its LeakyReLU slope is 0
    at 256 channels, a ReLU)."""
    layers: list[nn.Module] = [
        nn.Conv2d(inputs, outputs, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(outputs),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class Bottleneck(nn.Module):
    """torchvision's ResNet bottleneck (stride on the 3x3 convolution), with its parameter names."""

    def __init__(self, inputs: int, width: int, stride: int = 1) -> None:
        super().__init__()
        outputs = width * 4
        self.conv1 = nn.Conv2d(inputs, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, outputs, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(outputs)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inputs != outputs:
            self.downsample = nn.Sequential(nn.Conv2d(inputs, outputs, 1, stride, bias=False), nn.BatchNorm2d(outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


class ResNet50Body(nn.Module):
    """ResNet-50 without its classifier, returning the outputs of layers 2, 3 and 4 (strides 8, 16, 32)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inputs = 64
        for number, (blocks, width, stride) in enumerate(((3, 64, 1), (4, 128, 2), (6, 256, 2), (3, 512, 2)), 1):
            layers = [Bottleneck(inputs, width, stride)] + [Bottleneck(width * 4, width) for _ in range(blocks - 1)]
            setattr(self, f"layer{number}", nn.Sequential(*layers))
            inputs = width * 4

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c2 = self.layer2(self.layer1(x))
        c3 = self.layer3(c2)
        return [c2, c3, self.layer4(c3)]


class FPN(nn.Module):
    def __init__(self, channels: tuple[int, int, int] = (512, 1024, 2048), out: int = FEATURES) -> None:
        super().__init__()
        self.output1 = _conv_bn(channels[0], out, kernel=1)
        self.output2 = _conv_bn(channels[1], out, kernel=1)
        self.output3 = _conv_bn(channels[2], out, kernel=1)
        self.merge1 = _conv_bn(out, out)
        self.merge2 = _conv_bn(out, out)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        output1, output2, output3 = self.output1(features[0]), self.output2(features[1]), self.output3(features[2])
        output2 = self.merge2(output2 + F.interpolate(output3, size=output2.shape[-2:], mode="nearest"))
        output1 = self.merge1(output1 + F.interpolate(output2, size=output1.shape[-2:], mode="nearest"))
        return [output1, output2, output3]


class SSH(nn.Module):
    """The single-stage headless context module: half the channels from a 3x3, a quarter each from 5x5 and 7x7
    receptive fields (stacked 3x3 convolutions)."""

    def __init__(self, channels: int = FEATURES) -> None:
        super().__init__()
        self.conv3X3 = _conv_bn(channels, channels // 2, relu=False)
        self.conv5X5_1 = _conv_bn(channels, channels // 4)
        self.conv5X5_2 = _conv_bn(channels // 4, channels // 4, relu=False)
        self.conv7X7_2 = _conv_bn(channels // 4, channels // 4)
        self.conv7x7_3 = _conv_bn(channels // 4, channels // 4, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        five = self.conv5X5_1(x)
        seven = self.conv7X7_2(five)
        return F.relu(torch.cat([self.conv3X3(x), self.conv5X5_2(five), self.conv7x7_3(seven)], dim=1))


class _Head(nn.Module):
    def __init__(self, values: int, channels: int = FEATURES) -> None:
        super().__init__()
        self.values = values
        self.conv1x1 = nn.Conv2d(channels, ANCHORS_PER_POSITION * values, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1x1(x).permute(0, 2, 3, 1)
        return out.reshape(out.shape[0], -1, self.values)


class RetinaFace(nn.Module):
    """The network: per anchor, (box offsets [B, A, 4], face probability [B, A], landmark offsets [B, A, 10]),
    anchors ordered level by level, row by row, two per position."""

    def __init__(self) -> None:
        super().__init__()
        self.body = ResNet50Body()
        self.fpn = FPN()
        self.ssh1, self.ssh2, self.ssh3 = SSH(), SSH(), SSH()
        self.ClassHead = nn.ModuleList([_Head(2) for _ in range(3)])
        self.BboxHead = nn.ModuleList([_Head(4) for _ in range(3)])
        self.LandmarkHead = nn.ModuleList([_Head(10) for _ in range(3)])

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pyramid = self.fpn(self.body(images))
        features = [self.ssh1(pyramid[0]), self.ssh2(pyramid[1]), self.ssh3(pyramid[2])]
        boxes = torch.cat([head(f) for head, f in zip(self.BboxHead, features, strict=True)], dim=1)
        scores = torch.cat([head(f) for head, f in zip(self.ClassHead, features, strict=True)], dim=1)
        landmarks = torch.cat([head(f) for head, f in zip(self.LandmarkHead, features, strict=True)], dim=1)
        return boxes, F.softmax(scores, dim=-1)[..., 1], landmarks
