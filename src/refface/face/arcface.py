"""ArcFace identity embeddings: loading insightface's IResNet weights, with ReF-LDM's preprocessing.

ReF-LDM measures (and can train on) identity with an ArcFace network: the official evaluation feeds
FFHQ-aligned [-1, 1] crops to insightface's WebFace R50 ONNX model through onnx2torch. Here the same
network is an ordinary, differentiable `torch.nn.Module` whose state-dict names match insightface's
`arcface_torch` backbones (`refface.models.iresnet`, re-exported here), so it can load both `arcface_torch`
`.pth` files and insightface ONNX files (whose weights are mapped onto the module by following the graph,
without onnxruntime or onnx2torch).
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from refface.errors import RefFaceError, require_file, short_reason
from refface.models.iresnet import (
    EMBEDDING_SIZE,
    ArcFaceEmbedder,
    IResNet,
    arch_name,
    cosine_similarity,
    iresnet,
    iresnet50,
    iresnet100,
    layers_of,
)
from refface.weights import WeightFile, ensure_weights

__all__ = [
    "ARCFACE_R50_WEIGHTS",
    "EMBEDDING_SIZE",
    "ArcFaceEmbedder",
    "IResNet",
    "cosine_similarity",
    "default_arcface",
    "iresnet",
    "iresnet50",
    "iresnet100",
    "load_arcface",
]

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


# ------------------------------------------------------------------------------------------- loading
def load_arcface(path: str | Path, arch: str | Sequence[int] | None = None) -> ArcFaceEmbedder:
    """An ArcFace embedder from an arcface_torch state dict (`.pth`, `.pt`, ...) or an insightface `.onnx` file.

    The architecture is read from the file (block counts per stage); pass `arch` ('r50', 'r100' or four block
    counts) to insist on one. Anything that does not map exactly onto the IResNet is a RefFaceError that names
    the file and the first mismatch, never a partially loaded network.
    """
    source = require_file(path, "ArcFace weights file")
    wanted = None if arch is None else layers_of(arch)
    if source.suffix.lower() == ".onnx":
        from refface.models.arcface_onnx import import_onnx_weights

        state, layers = import_onnx_weights(source)
    else:
        state = _read_torch_state(source)
        layers = _infer_layers(state, source)
    if wanted is not None and wanted != layers:
        raise RefFaceError(
            f"The ArcFace weights file {source} holds an IResNet {arch_name(layers)}, not the requested "
            f"{arch_name(wanted)}."
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
                f"The ArcFace weights file {source} lacks '{key}' of an IResNet {arch_name(model.layers)}."
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
