"""ArcFace identity embeddings: the insightface IResNet in plain PyTorch, with ReF-LDM's preprocessing.

ReF-LDM measures (and can train on) identity with an ArcFace network: the official evaluation feeds
FFHQ-aligned [-1, 1] crops to insightface's WebFace R50 ONNX model through onnx2torch. Here the same
network is an ordinary, differentiable `torch.nn.Module` whose state-dict names match insightface's
`arcface_torch` backbones, so it can load both `arcface_torch` `.pth` files and insightface ONNX files
(whose weights are mapped onto the module by following the graph, without onnxruntime or onnx2torch).
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from refface.errors import RefFaceError, require_file
from refface.weights import WeightFile, ensure_weights

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

# insightface's buffalo_l recognition model (IResNet-50 trained on WebFace600K), mirrored on the Hugging Face
# hub by HF staff at public-data/insightface; the checksum is the one shown for its Git LFS object there.
# ReF-LDM's evaluation used the model zoo's Google-Drive "WebFace600K" R50 ONNX instead, which has no stable
# direct URL or published checksum; the model zoo lists different benchmark scores for the two, so identity
# scores from this default will be close to, but not exactly, the paper's. Pass that file to load_arcface to match.
ARCFACE_R50_WEIGHTS = WeightFile(
    "insightface_w600k_r50.onnx",
    "https://huggingface.co/public-data/insightface/resolve/33c1063c49c785b7652d3fd529f86fa4f149392b/"
    "models/buffalo_l/w600k_r50.onnx",
    "4c06341c33c2ca1f86781dab0e829f88ad5b64be9fba56e56bc9ebdefc619e43",
    "InsightFace model zoo licence: non-commercial research purposes only",
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
    return IResNet(_layers_of(arch))


def iresnet50() -> IResNet:
    """arcface_torch's iresnet50 (blocks 3, 4, 14, 3), untrained."""
    return IResNet(dict(ARCHITECTURES)["r50"])


def iresnet100() -> IResNet:
    """arcface_torch's iresnet100 (blocks 3, 13, 30, 3), untrained."""
    return IResNet(dict(ARCHITECTURES)["r100"])


def _layers_of(arch: str | Sequence[int]) -> tuple[int, ...]:
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


def _arch_name(layers: Sequence[int]) -> str:
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


# ------------------------------------------------------------------------------------------- loading
def load_arcface(path: str | Path, arch: str | Sequence[int] | None = None) -> ArcFaceEmbedder:
    """An ArcFace embedder from an arcface_torch state dict (`.pth`, `.pt`, ...) or an insightface `.onnx` file.

    The architecture is read from the file (block counts per stage); pass `arch` ('r50', 'r100' or four block
    counts) to insist on one. Anything that does not map exactly onto the IResNet is a RefFaceError that names
    the file and the first mismatch, never a partially loaded network.
    """
    source = require_file(path, "ArcFace weights file")
    wanted = None if arch is None else _layers_of(arch)
    if source.suffix.lower() == ".onnx":
        from refface.face.arcface_onnx import import_onnx_weights

        state, layers = import_onnx_weights(source)
    else:
        state = _read_torch_state(source)
        layers = _infer_layers(state, source)
    if wanted is not None and wanted != layers:
        raise RefFaceError(
            f"The ArcFace weights file {source} holds an IResNet {_arch_name(layers)}, not the requested "
            f"{_arch_name(wanted)}."
        )
    with torch.device("meta"):  # skip the random initialisation that the weights replace anyway
        backbone = IResNet(layers)
    backbone = backbone.to_empty(device="cpu")
    _load_state(backbone, state, source)
    return ArcFaceEmbedder(backbone)


def default_arcface(device: str | torch.device | None = None) -> ArcFaceEmbedder:
    """The default identity embedder (insightface WebFace600K R50), downloaded and verified on first use."""
    embedder = load_arcface(ensure_weights(ARCFACE_R50_WEIGHTS))
    return embedder if device is None else embedder.to(device)


def short_reason(error: BaseException) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip().splitlines()
    line = text[0].strip().rstrip(".") if text else type(error).__name__
    return line if len(line) <= 160 else line[:157] + "..."


def _read_torch_state(source: Path) -> dict[str, torch.Tensor]:
    try:
        loaded = torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise RefFaceError(
            f"The ArcFace weights file {source} is not a plain PyTorch state dict (it is damaged, or pickles "
            "objects other than tensors, which refface does not unpickle)."
        ) from None
    except Exception as error:  # not a zip archive, truncated, ...
        raise RefFaceError(
            f"The ArcFace weights file {source} could not be read as a PyTorch state dict ({short_reason(error)})."
        ) from None
    for key in ("state_dict_backbone", "state_dict", "model", "backbone"):
        if isinstance(loaded, Mapping) and isinstance(loaded.get(key), Mapping):
            loaded = loaded[key]
            break
    if not isinstance(loaded, Mapping) or not loaded:
        raise RefFaceError(f"The ArcFace weights file {source} does not hold a state dict of tensors.")
    state = {}
    for key, value in loaded.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise RefFaceError(f"The ArcFace weights file {source} has a non-tensor entry {key!r}.")
        while key.startswith("module."):  # saved from DataParallel / DistributedDataParallel
            key = key[len("module.") :]
        state[key] = value
    return state


def _infer_layers(state: Mapping[str, torch.Tensor], source: Path) -> tuple[int, ...]:
    layers = []
    for stage in range(1, 5):
        prefix = f"layer{stage}."
        blocks = {key[len(prefix) :].split(".", 1)[0] for key in state if key.startswith(prefix)}
        if not blocks or not all(block.isdigit() for block in blocks):
            raise RefFaceError(
                f"The ArcFace weights file {source} is not an arcface_torch IResNet state dict "
                f"(it has no numbered '{prefix}*' blocks)."
            )
        count = max(int(block) for block in blocks) + 1
        missing = sorted(set(range(count)) - {int(block) for block in blocks})
        if missing:
            raise RefFaceError(f"The ArcFace weights file {source} lacks block {prefix}{missing[0]}.")
        layers.append(count)
    return tuple(layers)


def _load_state(model: IResNet, state: Mapping[str, torch.Tensor], source: Path) -> None:
    """Strict loading with the first problem in one sentence (num_batches_tracked may be absent).

    `model` may hold uninitialised memory: every entry is overwritten (absent num_batches_tracked with 0).
    """
    expected = model.state_dict()
    for key, target in expected.items():
        if key not in state:
            if key.endswith("num_batches_tracked"):
                continue
            raise RefFaceError(
                f"The ArcFace weights file {source} lacks '{key}' of an IResNet {_arch_name(model.layers)}."
            )
        if tuple(state[key].shape) != tuple(target.shape):
            raise RefFaceError(
                f"The ArcFace weights file {source} has '{key}' of shape {list(state[key].shape)}, "
                f"but the IResNet expects {list(target.shape)}."
            )
    extra = [key for key in state if key not in expected]
    if extra:
        raise RefFaceError(f"The ArcFace weights file {source} has an entry '{extra[0]}' that no IResNet has.")
    with torch.no_grad():
        for key, target in expected.items():
            if key in state:
                target.copy_(state[key].to(target.dtype))
            else:
                target.zero_()
