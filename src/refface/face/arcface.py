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
from typing import Any, NoReturn

import numpy as np
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
        state, layers = _OnnxImporter(source).import_weights()
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


def _reason(error: BaseException) -> str:
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
            f"The ArcFace weights file {source} could not be read as a PyTorch state dict ({_reason(error)})."
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


# -------------------------------------------------------------------------------------- ONNX import
_PASS_THROUGH = frozenset({"Identity", "Dropout"})
_SHAPE_ONLY = frozenset({"Shape", "Size"})
_INPUT_ARITHMETIC = frozenset({"Sub", "Add", "Mul", "Div"})
_CONSTANT_SHAPING = frozenset({"Unsqueeze", "Squeeze", "Reshape", "Flatten", "Cast"})


class _OnnxImporter:
    """Maps an insightface/arcface_torch ONNX graph onto IResNet parameter names by following its data flow.

    Supported layouts (tested on graphs from torch's legacy exporter, BN folded and not, opsets 11 and 17, and on
    a synthetic Sub/Mul input normalisation; no released insightface file could be fetched for the tests):

    * every convolution either followed by its BatchNormalization or with that BN folded in (Conv with bias);
      a folded Conv(W, b) becomes our conv weight W plus an identity BN (weight 1, mean 0, var 1 - eps) with bias b;
    * BatchNormalization nodes of any epsilon (folded into our eps-1e-5 running variance);
    * PRelu slopes of shape [C], [C, 1, 1] or [1], stored or reshaped in the graph (Unsqueeze/Reshape/Cast);
    * Identity / Dropout nodes anywhere on the data path, Shape side branches for a dynamic batch;
    * head: BatchNormalization -> Flatten or Reshape -> Gemm (any transB/alpha/beta) or MatMul (+ Add) ->
      optional BatchNormalization (absent when folded into the Gemm);
    * an input normalisation of Sub/Add/Mul/Div by constants before the first Conv (insightface's MXNet
      conversions: (x - 127.5) * 0.0078125 on 0..255 pixels). The graph then expects 0..255 input, so its scale
      is folded into the first convolution for our [-1, 1] input; an offset that does not cancel cannot be folded
      exactly (zero padding) and is refused.

    The downsample shortcut is told apart from the main path by the graph: it is the 1x1 Conv that reads the
    block input and feeds the residual Add, never by node names.
    """

    def __init__(self, source: Path) -> None:
        self.source = source
        try:
            import onnx
            from onnx import helper, numpy_helper
        except ImportError:
            raise RefFaceError(
                f"Reading the ArcFace ONNX file {source} needs the onnx package; run `pip install onnx`."
            ) from None
        self._attribute_value = helper.get_attribute_value
        try:
            model = onnx.load(str(source))
            graph = model.graph
            self.consts: dict[str, np.ndarray] = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
            self.producer: dict[str, Any] = {}
            self.readers: dict[str, list[Any]] = {}
            for node in graph.node:
                if node.op_type == "Constant" and node.attribute:
                    self.consts[node.output[0]] = self._constant_value(node, numpy_helper)
                    continue
                for name in node.output:
                    self.producer[name] = node
                for name in node.input:
                    if name:
                        self.readers.setdefault(name, []).append(node)
            self.inputs = [value for value in graph.input if value.name not in self.consts]
            self.outputs = [value.name for value in graph.output]
        except RefFaceError:
            raise
        except Exception as error:  # protobuf decode errors, bad tensors, missing external data...
            raise RefFaceError(f"The ArcFace ONNX file {source} could not be read ({_reason(error)}).") from None
        self.state: dict[str, torch.Tensor] = {}
        self.where = "the stem"  # for error messages: the part of the network being matched
        self.blocks = 0

    @staticmethod
    def _constant_value(node: Any, numpy_helper: Any) -> np.ndarray:
        attribute = node.attribute[0]
        if attribute.name == "value":
            return numpy_helper.to_array(attribute.t)
        if attribute.name in ("value_float", "value_int"):
            return np.array(attribute.f if attribute.name == "value_float" else attribute.i)
        if attribute.name in ("value_floats", "value_ints"):
            return np.array(list(attribute.floats if attribute.name == "value_floats" else attribute.ints))
        return np.array([])

    # ---------------------------------------------------------------- graph helpers
    def fail(self, detail: str) -> NoReturn:
        raise RefFaceError(
            f"The ArcFace ONNX file {self.source} does not match the IResNet layout: in {self.where}, {detail}."
        )

    @staticmethod
    def describe(node: Any) -> str:
        return f"{node.op_type} node '{node.name}'" if node.name else f"{node.op_type} node"

    def canonical(self, tensor: str) -> str:
        """The tensor behind any chain of Identity/Dropout nodes."""
        seen = 0
        while tensor in self.producer and self.producer[tensor].op_type in _PASS_THROUGH and seen < 10_000:
            tensor, seen = self.producer[tensor].input[0], seen + 1
        return tensor

    def users(self, tensor: str) -> list[Any]:
        """Nodes that compute with `tensor`, looking through Identity/Dropout and ignoring Shape side branches."""
        found = []
        for node in self.readers.get(tensor, []):
            if node.op_type in _PASS_THROUGH:
                if node.input[0] == tensor:
                    found.extend(self.users(node.output[0]))
            elif node.op_type not in _SHAPE_ONLY:
                found.append(node)
        return found

    def only_user(self, tensor: str, ops: Sequence[str], what: str) -> Any:
        """The single node reading `tensor`, which must be one of `ops` and read it as its data input."""
        users = self.users(tensor)
        inputs = [self.canonical(name) for name in users[0].input] if len(users) == 1 else []
        # A residual Add may list the shortcut first; every other op takes its data as input 0.
        reads = tensor in inputs if users and users[0].op_type == "Add" else inputs[:1] == [tensor]
        if len(users) != 1 or users[0].op_type not in ops or not reads:
            found = ", ".join(self.describe(node) for node in users) or "nothing"
            self.fail(f"expected {what} ({'/'.join(ops)}) next but found {found}")
        return users[0]

    def attributes(self, node: Any) -> dict[str, Any]:
        values = {}
        for attribute in node.attribute:
            value = self._attribute_value(attribute)
            values[attribute.name] = value.decode() if isinstance(value, bytes) else value
        return values

    def const(self, node: Any, index: int, what: str) -> np.ndarray | None:
        if index >= len(node.input) or not node.input[index]:
            return None
        value = self.folded(self.canonical(node.input[index]))
        if value is None:
            self.fail(f"the {what} of {self.describe(node)} is computed in the graph instead of stored")
        return np.asarray(value, dtype=np.float32)

    def folded(self, name: str, depth: int = 0) -> np.ndarray | None:
        """A stored constant, or one that an unfolded export reshapes or casts on the way (e.g. PReLU slopes)."""
        if name in self.consts:
            return self.consts[name]
        node = self.producer.get(name)
        if node is None or depth > 8 or node.op_type not in _CONSTANT_SHAPING:
            return None
        value = self.folded(self.canonical(node.input[0]), depth + 1)
        if value is None:
            return None
        attributes = self.attributes(node)
        second = self.folded(self.canonical(node.input[1]), depth + 1) if len(node.input) > 1 else None
        if node.op_type in ("Unsqueeze", "Squeeze"):
            axes = attributes.get("axes", None if second is None else [int(axis) for axis in second.reshape(-1)])
            if node.op_type == "Squeeze":
                return np.squeeze(value, axis=None if axes is None else tuple(axes))
            for axis in sorted(axis % (value.ndim + len(axes)) for axis in axes or []):
                value = np.expand_dims(value, axis)
            return value
        if node.op_type == "Reshape":
            if second is None:
                return None
            shape = [value.shape[i] if dim == 0 and i < value.ndim else int(dim) for i, dim in enumerate(second)]
            return value.reshape(shape)
        if node.op_type == "Flatten":
            axis = int(attributes.get("axis", 1)) % max(value.ndim, 1)
            return value.reshape(int(np.prod(value.shape[:axis])), -1)
        return value  # Cast: the values are used as float32 anyway

    def required(self, node: Any, index: int, what: str) -> np.ndarray:
        value = self.const(node, index, what)
        if value is None:
            self.fail(f"{self.describe(node)} has no {what}")
        return value

    def put(self, name: str, value: np.ndarray) -> None:
        self.state[name] = torch.from_numpy(np.array(value, dtype=np.float32, order="C"))  # a writable copy

    # ---------------------------------------------------------------- layers
    def batchnorm(self, node: Any, prefix: str, offset: np.ndarray | None = None) -> str:
        """A BatchNormalization node as our eps-1e-5 BN; `offset` is a bias added just before it."""
        attributes = self.attributes(node)
        if attributes.get("training_mode", 0):
            self.fail(f"{self.describe(node)} is in training mode")
        epsilon = float(attributes.get("epsilon", 1e-5))
        weight, bias, mean, var = (
            self.required(node, index, what) for index, what in enumerate(("scale", "bias", "mean", "variance"), 1)
        )
        if offset is not None:
            mean = mean - offset
        self.put(f"{prefix}.weight", weight)
        self.put(f"{prefix}.bias", bias)
        self.put(f"{prefix}.running_mean", mean)
        self.put(f"{prefix}.running_var", var if epsilon == BN_EPS else var.astype(np.float64) + epsilon - BN_EPS)
        return node.output[0]

    def identity_batchnorm(self, prefix: str, bias: np.ndarray) -> None:
        self.put(f"{prefix}.weight", np.ones_like(bias))
        self.put(f"{prefix}.bias", bias)
        self.put(f"{prefix}.running_mean", np.zeros_like(bias))
        self.put(f"{prefix}.running_var", np.full_like(bias, 1.0 - BN_EPS))

    def conv_node(self, node: Any, kernel: int, strides: Sequence[int], label: str) -> tuple[np.ndarray, int]:
        weight = self.required(node, 1, "weight")
        attributes = self.attributes(node)
        stride = list(attributes.get("strides", [1, 1]))
        padding = kernel // 2
        problems = [
            (weight.ndim != 4 or weight.shape[2:] != (kernel, kernel), f"a {kernel}x{kernel} kernel"),
            (len(stride) != 2 or stride[0] != stride[1] or stride[0] not in strides, f"a stride in {list(strides)}"),
            (list(attributes.get("pads", [0, 0, 0, 0])) != [padding] * 4, f"padding {padding}"),
            (attributes.get("group", 1) != 1, "group 1"),
            (list(attributes.get("dilations", [1, 1])) != [1, 1], "dilation 1"),
            (attributes.get("auto_pad", "NOTSET") not in ("NOTSET", ""), "explicit padding"),
        ]
        for bad, wanted in problems:
            if bad:
                self.fail(f"{self.describe(node)} ({label}) should have {wanted}")
        return weight, stride[0]

    def conv_bn(self, tensor: str, conv: str, bn: str, kernel: int, strides: Sequence[int]) -> tuple[str, int]:
        """Conv reading `tensor`, then its BN or, if folded into the Conv's bias, an identity BN."""
        label = conv.rsplit(".", 1)[-1]
        node = self.only_user(tensor, ("Conv",), label)
        weight, stride = self.conv_node(node, kernel, strides, label)
        bias = self.const(node, 2, "bias")
        self.put(f"{conv}.weight", weight)
        out = node.output[0]
        users = self.users(out)
        if len(users) == 1 and users[0].op_type == "BatchNormalization":
            return self.batchnorm(users[0], bn, bias), stride
        self.identity_batchnorm(bn, np.zeros(weight.shape[0]) if bias is None else bias)
        return self.canonical(out), stride

    def prelu(self, tensor: str, prefix: str, channels: int) -> str:
        node = self.only_user(tensor, ("PRelu",), "a PReLU")
        slope = self.required(node, 1, "slope").reshape(-1)
        if slope.size == 1:
            slope = np.full(channels, slope[0])
        if slope.size != channels:
            self.fail(f"{self.describe(node)} has {slope.size} slopes for {channels} channels")
        self.put(f"{prefix}.weight", slope)
        return self.canonical(node.output[0])

    def input_scale(self, tensor: str) -> tuple[str, np.ndarray | None]:
        """Fold a leading Sub/Add/Mul/Div normalisation (graph expects 0..255) into a per-channel input scale."""
        scale, shift, found = np.ones((1, 3, 1, 1)), np.zeros((1, 3, 1, 1)), False
        while True:
            users = self.users(tensor)
            if len(users) != 1 or users[0].op_type not in _INPUT_ARITHMETIC:
                break
            node = users[0]
            operands = [self.canonical(name) for name in node.input]
            if len(operands) != 2 or operands.count(tensor) != 1:
                break
            index = 1 - operands.index(tensor)
            constant = self.required(node, index, "normalisation constant")
            if constant.size == 1:
                constant = np.full((1, 3, 1, 1), float(constant.reshape(-1)[0]))
            elif constant.size == 3 and constant.shape in ((3, 1, 1), (1, 3, 1, 1)):
                constant = constant.reshape(1, 3, 1, 1)
            else:
                self.fail(f"{self.describe(node)} normalises the input with a constant of shape {list(constant.shape)}")
            if node.op_type == "Add":
                shift = shift + constant
            elif node.op_type == "Sub":
                scale, shift = (scale, shift - constant) if index == 1 else (-scale, constant - shift)
            elif node.op_type == "Mul":
                scale, shift = scale * constant, shift * constant
            elif index == 1:  # Div by a constant
                scale, shift = scale / constant, shift / constant
            else:
                self.fail(f"{self.describe(node)} divides by the input")
            tensor, found = self.canonical(node.output[0]), True
        if not found:
            return tensor, None
        # The graph wants 0..255 pixels u = 127.5 * (x + 1) for our x in [-1, 1]: scale * u + shift = a * x + b.
        a, b = 127.5 * scale, 127.5 * scale + shift
        if np.abs(b).max() > 1e-4 * max(np.abs(a).max(), 1e-12):
            raise RefFaceError(
                f"The ArcFace ONNX file {self.source} normalises its input with an offset that does not map "
                "[-1, 1] images to zero mean, which cannot be folded into the first convolution exactly."
            )
        return tensor, a.reshape(3)

    # ---------------------------------------------------------------- whole network
    def import_weights(self) -> tuple[dict[str, torch.Tensor], tuple[int, ...]]:
        """IResNet state dict and block counts; a malformed graph (say, a node missing inputs) is one sentence."""
        try:
            return self.run()
        except RefFaceError:
            raise
        except Exception as error:
            raise RefFaceError(
                f"The ArcFace ONNX file {self.source} could not be mapped onto an IResNet in {self.where} "
                f"({type(error).__name__}: {_reason(error)})."
            ) from None

    def run(self) -> tuple[dict[str, torch.Tensor], tuple[int, ...]]:
        if len(self.inputs) != 1:
            self.fail(f"it has {len(self.inputs)} image inputs instead of one")
        value = self.inputs[0]
        dims = [dim.dim_value if dim.HasField("dim_value") else None for dim in value.type.tensor_type.shape.dim]
        fits = len(dims) == 4 and all(
            dims[axis] in (None, want) for axis, want in ((1, 3), (2, INPUT_SIZE), (3, INPUT_SIZE))
        )
        if dims and not fits:
            shown = ["N" if dim is None else dim for dim in dims]
            self.fail(f"its input has shape {shown}, not [N, 3, {INPUT_SIZE}, {INPUT_SIZE}]")
        tensor, scale = self.input_scale(self.canonical(value.name))

        tensor, _ = self.conv_bn(tensor, "conv1", "bn1", 3, (1,))
        if scale is not None:
            self.state["conv1.weight"] *= torch.from_numpy(scale.astype(np.float32)).view(1, 3, 1, 1)
        if self.state["conv1.weight"].shape[1] != 3:
            self.fail(f"the first convolution reads {self.state['conv1.weight'].shape[1]} channels, not 3")
        tensor = self.prelu(tensor, "prelu", STAGE_WIDTHS[0])

        layers: list[int] = []
        for _ in range(len(self.producer) + 1):
            users = self.users(tensor)
            if len(users) == 1 and users[0].op_type == "BatchNormalization":
                break  # the final bn2: no shortcut reads its input
            tensor = self.block(tensor, users, layers)
        if len(layers) != 4:
            self.fail(f"it has {len(layers)} downsampling stages instead of 4")

        self.where = "the head"
        bn2 = self.only_user(tensor, ("BatchNormalization",), "the final bn2")
        tensor = self.canonical(self.batchnorm(bn2, "bn2"))
        flatten = self.only_user(tensor, ("Flatten", "Reshape"), "the flatten before fc")
        if flatten.op_type == "Flatten" and self.attributes(flatten).get("axis", 1) != 1:
            self.fail(f"{self.describe(flatten)} does not flatten from axis 1")
        tensor = self.canonical(flatten.output[0])
        tensor, width = self.fully_connected(tensor)
        users = self.users(tensor)
        if len(users) == 1 and users[0].op_type == "BatchNormalization":
            tensor = self.canonical(self.batchnorm(users[0], "features"))
        else:  # folded into the fc layer
            self.identity_batchnorm("features", np.zeros(width))
        leftover = self.users(tensor)
        if leftover:
            self.fail(f"{self.describe(leftover[0])} follows the embedding layer")
        if tensor not in {self.canonical(name) for name in self.outputs}:
            self.fail("the embedding layer is not the graph output")
        return self.state, tuple(layers)

    def block(self, tensor: str, users: list[Any], layers: list[int]) -> str:
        """One IBasicBlock reading `tensor` (counted into `layers`); returns the residual sum."""
        norms = [node for node in users if node.op_type == "BatchNormalization"]
        if len(norms) != 1:
            found = ", ".join(self.describe(node) for node in users) or "nothing"
            self.fail(f"expected a residual block (BatchNormalization and a shortcut) after it, found {found}")
        # The name depends on whether this block starts a stage, known once its shortcut is found: use a
        # scratch prefix, then rename.
        scratch = "block"
        self.blocks += 1
        self.where = f"residual block {self.blocks}"
        out = self.canonical(self.batchnorm(norms[0], f"{scratch}.bn1"))
        out, _ = self.conv_bn(out, f"{scratch}.conv1", f"{scratch}.bn2", 3, (1,))
        planes = self.state[f"{scratch}.conv1.weight"].shape[0]
        out = self.prelu(out, f"{scratch}.prelu", planes)
        out, stride = self.conv_bn(out, f"{scratch}.conv2", f"{scratch}.bn3", 3, (1, 2))
        add = self.only_user(out, ("Add",), "the residual Add")
        operands = [self.canonical(name) for name in add.input]
        if len(operands) != 2 or out not in operands:
            self.fail(f"{self.describe(add)} is not a two-input residual sum")
        shortcut = operands[1 - operands.index(out)]
        downsample = shortcut != tensor
        allowed = [norms[0], add]
        if downsample:
            allowed.append(self.shortcut(shortcut, tensor, scratch, stride))
            layers.append(1)
        elif not layers:
            self.fail("the first block has no downsampling shortcut")
        else:
            layers[-1] += 1
        others = [node for node in users if not any(node is known for known in allowed)]
        if others:
            self.fail(f"{self.describe(others[0])} also reads the input of a residual block")
        stage, index = len(layers), layers[-1] - 1
        if stage > 4:
            self.fail("it has more than 4 downsampling stages")
        if planes != STAGE_WIDTHS[stage - 1] or stride != (2 if downsample else 1):
            self.fail(
                f"block {index} of stage {stage} has {planes} channels and stride {stride}, expected "
                f"{STAGE_WIDTHS[stage - 1]} and {2 if downsample else 1}"
            )
        for key in [key for key in self.state if key.startswith(f"{scratch}.")]:
            self.state[f"layer{stage}.{index}.{key[len(scratch) + 1 :]}"] = self.state.pop(key)
        return self.canonical(add.output[0])

    def shortcut(self, shortcut: str, tensor: str, scratch: str, stride: int) -> Any:
        """The downsample branch: a 1x1 Conv reading the block input, then its (possibly folded) BN."""
        node = self.producer.get(shortcut)
        bn = None
        if node is not None and node.op_type == "BatchNormalization":
            bn, node = node, self.producer.get(self.canonical(node.input[0]))
        if node is None or node.op_type != "Conv" or self.canonical(node.input[0]) != tensor:
            self.fail("a residual Add adds neither the block input nor a 1x1 Conv of it")
        weight, ds_stride = self.conv_node(node, 1, (1, 2), "downsample")
        if ds_stride != stride:
            self.fail(f"{self.describe(node)} has stride {ds_stride} but its block has stride {stride}")
        offset = self.const(node, 2, "bias")
        self.put(f"{scratch}.downsample.0.weight", weight)
        if bn is not None:
            self.batchnorm(bn, f"{scratch}.downsample.1", offset)
        else:
            self.identity_batchnorm(f"{scratch}.downsample.1", np.zeros(weight.shape[0]) if offset is None else offset)
        return node

    def fully_connected(self, tensor: str) -> tuple[str, int]:
        """fc as Gemm or MatMul (+ Add); returns its output tensor and width."""
        node = self.only_user(tensor, ("Gemm", "MatMul"), "the fc layer")
        weight = self.required(node, 1, "weight")
        if weight.ndim != 2:
            self.fail(f"{self.describe(node)} has a weight of shape {list(weight.shape)}")
        if node.op_type == "Gemm":
            attributes = self.attributes(node)
            if attributes.get("transA", 0):
                self.fail(f"{self.describe(node)} transposes its input")
            if float(attributes.get("alpha", 1.0)) != 1.0:
                weight = weight * float(attributes["alpha"])
            if not attributes.get("transB", 0):
                weight = weight.T
            bias = self.const(node, 2, "bias")
            bias = None if bias is None else bias * float(attributes.get("beta", 1.0))
            out = self.canonical(node.output[0])
        else:
            weight = weight.T
            out, bias = self.canonical(node.output[0]), None
            users = self.users(out)
            if len(users) == 1 and users[0].op_type == "Add":
                operands = [self.canonical(name) for name in users[0].input]
                if len(operands) == 2 and operands.count(out) == 1:
                    bias = self.required(users[0], 1 - operands.index(out), "bias")
                    out = self.canonical(users[0].output[0])
        width = weight.shape[0]
        bias = np.zeros(width) if bias is None else bias.reshape(-1)
        if bias.size == 1:
            bias = np.full(width, bias[0])
        if bias.size != width:
            self.fail(f"{self.describe(node)} has {bias.size} biases for {width} outputs")
        self.put("fc.weight", weight)
        self.put("fc.bias", bias)
        return out, width
