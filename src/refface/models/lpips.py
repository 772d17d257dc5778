"""LPIPS-VGG (v0.1) in plain PyTorch, for the VQGAN's perceptual loss without torchvision.

The network is LPIPS as in richzhang/PerceptualSimilarity and taming-transformers: images in [-1, 1] are
shifted and scaled to the ImageNet statistics LPIPS uses, passed through VGG16's convolutional layers, and
at relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3 the channel-normalised features of the two images are
subtracted, squared, weighted per channel by a 1x1 convolution, averaged over space and summed over taps.

Layer names are chosen so the two public weight files load key for key: torchvision's `vgg16-397923af.pth`
(`features.<index>.weight`, index as in torchvision's VGG16) and LPIPS's v0.1 `vgg.pth`
(`lin<k>.model.1.weight`). The module is frozen but differentiable with respect to its inputs.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from refface.errors import RefFaceError
from refface.models.checkpoints import read_state_dict
from refface.weights import WeightFile, ensure_weights

# SHA-256 digests as several independent public repositories pin them for these exact files (not computed
# here, the files were not downloaded). The VGG16 one starts with the "397923af" of torchvision's file name,
# as torchvision's own hash check requires; that file is 553,433,881 bytes, LPIPS's vgg.pth 7,289 bytes.
VGG16_WEIGHTS = WeightFile(
    "vgg16-397923af.pth",
    "https://download.pytorch.org/models/vgg16-397923af.pth",
    "397923af8e79cdbb6a7127f12361acd7a2f83e06b05044ddf496e83de57a5bf0",
    "torchvision's ImageNet-trained VGG16 (torchvision, BSD-3-Clause)",
)
LPIPS_VGG_WEIGHTS = WeightFile(
    "lpips-vgg-v0.1.pth",
    "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/vgg.pth",
    "a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868",
    "LPIPS v0.1 linear layers (richzhang/PerceptualSimilarity, BSD-2-Clause)",
)

# VGG16 "D" configuration up to relu5_3: output channels of each 3x3 convolution, "M" for 2x2 max pooling.
VGG16_LAYOUT: tuple[int | str, ...] = (
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    "M",
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
)
# Indices (in torchvision's `features`) of the ReLUs whose outputs LPIPS compares: relu1_2 ... relu5_3.
TAP_INDICES = (3, 8, 15, 22, 29)
TAP_CHANNELS = (64, 128, 256, 512, 512)
# LPIPS's ScalingLayer constants: [-1, 1] images -> ImageNet-normalised ones.
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)


def _vgg16_features() -> nn.Sequential:
    """torchvision's `vgg16().features` up to relu5_3 (indices 0..29), with non-inplace ReLUs."""
    layers: list[nn.Module] = []
    channels = 3
    for item in VGG16_LAYOUT:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(channels, int(item), kernel_size=3, padding=1), nn.ReLU()]
            channels = int(item)
    return nn.Sequential(*layers)


class _LinearHead(nn.Module):
    """LPIPS's NetLinLayer: `model.0` was dropout (inactive in eval), `model.1` the 1x1 channel weights."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Identity(), nn.Conv2d(channels, 1, kernel_size=1, bias=False))


class LPIPS(nn.Module):
    """LPIPS-VGG distance between two batches of images in [-1, 1]; frozen, gradients reach the inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)
        self.features = _vgg16_features()
        self.lin0, self.lin1, self.lin2, self.lin3, self.lin4 = (_LinearHead(c) for c in TAP_CHANNELS)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> LPIPS:
        """Always stays in eval mode: it is a fixed metric, whatever the trainer does to its modules."""
        return super().train(False)

    def _taps(self, images: torch.Tensor) -> list[torch.Tensor]:
        hidden = (images.to(self.shift.dtype) - self.shift) / self.scale
        taps = []
        for index, layer in enumerate(self.features):
            hidden = layer(hidden)
            if index in TAP_INDICES:
                taps.append(hidden)
        return taps

    def forward(self, images: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] x2 in [-1, 1] -> [B] distances (0 for identical images)."""
        if images.shape != others.shape or images.ndim != 4 or images.shape[1] != 3:
            raise RefFaceError(
                f"LPIPS compares two [B, 3, H, W] batches of the same shape, got {tuple(images.shape)} and "
                f"{tuple(others.shape)}."
            )
        heads = (self.lin0, self.lin1, self.lin2, self.lin3, self.lin4)
        total = images.new_zeros(images.shape[0], dtype=self.shift.dtype)
        for head, first, second in zip(heads, self._taps(images), self._taps(others), strict=True):
            difference = (_unit_channels(first) - _unit_channels(second)) ** 2
            total = total + head.model(difference).mean(dim=(1, 2, 3))
        return total


def _unit_channels(features: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Features divided by their L2 norm over channels (LPIPS's normalize_tensor).

    `vector_norm` has a zero gradient where all channels are zero, where a hand-written sqrt would give NaN.
    """
    return features / (torch.linalg.vector_norm(features, dim=1, keepdim=True) + eps)


def _expected_vgg_shapes(model: LPIPS) -> dict[str, torch.Size]:
    return {f"features.{key}": value.shape for key, value in model.features.state_dict().items()}


def _expected_lin_shapes(model: LPIPS) -> dict[str, torch.Size]:
    return {key: value.shape for key, value in model.state_dict().items() if key.startswith("lin")}


def _check_keys(
    state: dict[str, torch.Tensor], expected: dict[str, torch.Size], source: Path, what: str
) -> dict[str, torch.Tensor]:
    """The entries of `state` named in `expected`, or a one-sentence error naming the first mismatch."""
    missing = [key for key in expected if key not in state]
    if missing:
        raise RefFaceError(
            f"The {what} file {source} lacks {len(missing)} of the expected weights (e.g. {missing[0]})."
        )
    for key, shape in expected.items():
        if state[key].shape != shape:
            raise RefFaceError(
                f"The {what} file {source} has {key} of shape {tuple(state[key].shape)}, expected {tuple(shape)}."
            )
    return {key: state[key] for key in expected}


def load_lpips(vgg_path: str | Path, lin_path: str | Path) -> LPIPS:
    """LPIPS-VGG from torchvision's `vgg16-397923af.pth` and LPIPS's v0.1 `vgg.pth` (read with weights_only)."""
    model = LPIPS()
    vgg_source, lin_source = Path(vgg_path), Path(lin_path)
    vgg_state = read_state_dict(vgg_source, "VGG16 weights")
    expected = _expected_vgg_shapes(model)
    unknown = [k for k in vgg_state if k.startswith("features.") and k not in expected]
    if unknown:
        raise RefFaceError(
            f"The VGG16 weights file {vgg_source} has layers that plain VGG16 lacks (e.g. {unknown[0]}), "
            "so it holds another network such as vgg16_bn."
        )
    features = _check_keys(vgg_state, expected, vgg_source, "VGG16 weights")
    lin_state = read_state_dict(lin_source, "LPIPS weights")
    extra = [k for k in lin_state if k not in _expected_lin_shapes(model)]
    if extra:
        raise RefFaceError(
            f"The LPIPS weights file {lin_source} has entries LPIPS-VGG v0.1 does not have (e.g. {extra[0]})."
        )
    lins = _check_keys(lin_state, _expected_lin_shapes(model), lin_source, "LPIPS weights")
    state = {**features, **lins}
    model.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, strict=True)
    return model


def default_lpips(device: torch.device | str | None = None, directory: Path | None = None) -> LPIPS:
    """LPIPS-VGG with the public weights, downloaded once (and verified) into the refface cache."""
    vgg = ensure_weights(VGG16_WEIGHTS, directory)
    lin = ensure_weights(LPIPS_VGG_WEIGHTS, directory)
    model = load_lpips(vgg, lin)
    return model.to(device) if device is not None else model


def random_lpips(seed: int) -> LPIPS:
    """LPIPS-VGG with random weights (He-normal convolutions, non-negative heads), for tests and smoke runs."""
    generator = torch.Generator().manual_seed(seed)
    model = LPIPS()
    with torch.no_grad():
        for layer in model.features:
            if isinstance(layer, nn.Conv2d):
                fan_in = layer.in_channels * 9
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * (2.0 / fan_in) ** 0.5)
                layer.bias.copy_(torch.randn(layer.bias.shape, generator=generator) * 0.01)
        for head in (model.lin0, model.lin1, model.lin2, model.lin3, model.lin4):
            weight = head.model[1].weight
            weight.copy_(torch.rand(weight.shape, generator=generator) / weight.shape[1])
    return model
