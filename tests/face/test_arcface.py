"""The ArcFace embedder: preprocessing, gradients, and loading .pth and ONNX files (tiny random IResNets, offline)."""

from __future__ import annotations

import re
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from refface.errors import RefFaceError
from refface.face import arcface
from refface.face.arcface import (
    ARCFACE_R50_WEIGHTS,
    ArcFaceEmbedder,
    IResNet,
    cosine_similarity,
    default_arcface,
    load_arcface,
)

LAYERS = (1, 2, 1, 1)


def random_iresnet(seed: int = 0, layers: tuple[int, ...] = LAYERS) -> IResNet:
    """An eval-mode IResNet whose BN statistics, affine parameters and PReLU slopes are all non-trivial."""
    torch.manual_seed(seed)
    net = IResNet(layers)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d | nn.BatchNorm1d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.3, 0.3)
                module.running_mean.uniform_(-0.3, 0.3)
                module.running_var.uniform_(0.5, 1.5)
            elif isinstance(module, nn.PReLU):
                module.weight.uniform_(0.0, 0.5)
    return net.eval()


def images(count: int, size: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(count, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.fixture(scope="module")
def net() -> IResNet:
    return random_iresnet()


@pytest.fixture(scope="module")
def embedder(net: IResNet) -> ArcFaceEmbedder:
    return ArcFaceEmbedder(net)


@pytest.fixture(scope="module")
def reference(embedder: ArcFaceEmbedder) -> torch.Tensor:
    """Embeddings of `images(2, 64)` from the original torch network."""
    with torch.no_grad():
        return embedder(images(2, 64))


def export_onnx(model: nn.Module, target: Path, opset: int = 11, fold: bool = True) -> Path:
    """The legacy TorchScript exporter (torch 2.13 still has it with dynamo=False; it needs no onnxscript)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        torch.onnx.export(
            model,
            (torch.zeros(1, 3, 112, 112),),
            str(target),
            dynamo=False,
            do_constant_folding=fold,
            opset_version=opset,
            input_names=["input"],
            output_names=["embedding"],
            dynamic_axes={"input": {0: "batch"}, "embedding": {0: "batch"}},
        )
    return target


@pytest.fixture(scope="module")
def onnx_file(net: IResNet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The network exported like insightface's files: legacy exporter, opset 11, BN folded into the convs."""
    pytest.importorskip("onnx")
    return export_onnx(net, tmp_path_factory.mktemp("onnx") / "tiny_r.onnx", opset=11)


# ------------------------------------------------------------------------------------------ embedder
@pytest.mark.parametrize("size", [512, 64])
def test_embeddings_are_unit_vectors(embedder: ArcFaceEmbedder, size: int) -> None:
    with torch.no_grad():
        out = embedder(images(3, size))
    assert out.shape == (3, 512)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(3))
    assert not torch.allclose(out[0], out[1])


def test_preprocessing_uses_the_official_crop(embedder: ArcFaceEmbedder) -> None:
    x = images(2, 100)
    # int(100 * 0.0625) = 6 and int(100 * 0.9375) = 93, as in ReF-LDM's identity_loss.py.
    expected = F.interpolate(x[:, :, 6:93, 6:93], size=(112, 112), mode="area")
    torch.testing.assert_close(embedder.preprocess(x), expected)
    # At 512 the crop is 32..480 and the area resize an exact 4x4 average.
    x = images(1, 512)
    torch.testing.assert_close(embedder.preprocess(x), F.avg_pool2d(x[:, :, 32:480, 32:480], 4))


def test_gradients_reach_the_images(embedder: ArcFaceEmbedder) -> None:
    x = images(2, 64).requires_grad_(True)
    target = F.normalize(torch.randn(2, 512, generator=torch.Generator().manual_seed(7)), dim=1)
    loss = (1 - cosine_similarity(embedder(x), target)).mean()
    loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(parameter.grad is None for parameter in embedder.parameters())


def test_embedder_stays_frozen_in_train_mode(net: IResNet, reference: torch.Tensor) -> None:
    parent = nn.ModuleDict({"id": ArcFaceEmbedder(net)}).train()
    assert parent.training and not parent["id"].backbone.training
    with torch.no_grad():
        torch.testing.assert_close(parent["id"](images(2, 64)), reference)  # running statistics, not batch ones


def test_similarity_of_identical_images_is_one(embedder: ArcFaceEmbedder) -> None:
    x = images(1, 64)
    with torch.no_grad():
        torch.testing.assert_close(embedder.similarity(x, x), torch.ones(1))
    a, b = F.normalize(torch.randn(2, 4, 512), dim=-1)
    torch.testing.assert_close(cosine_similarity(a, b), (a * b).sum(-1))


def test_bad_image_tensors_are_explained(embedder: ArcFaceEmbedder) -> None:
    with pytest.raises(RefFaceError, match="B, 3, H, W"):
        embedder(torch.zeros(3, 64, 64))
    with pytest.raises(RefFaceError, match="float"):
        embedder(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))


# -------------------------------------------------------------------------------------------- .pth files
@pytest.mark.parametrize("wrapped", [False, True])
def test_pth_round_trip(net: IResNet, reference: torch.Tensor, tmp_path: Path, wrapped: bool) -> None:
    state = net.state_dict()
    if wrapped:  # as saved from DistributedDataParallel inside a training checkpoint
        state = {"state_dict": {f"module.{key}": value for key, value in state.items()}, "epoch": 3}
    path = tmp_path / "backbone.pth"
    torch.save(state, path)
    loaded = load_arcface(path)
    assert loaded.layers == LAYERS
    with torch.no_grad():
        assert torch.equal(loaded(images(2, 64)), reference)


def test_pth_without_num_batches_tracked_loads(net: IResNet, tmp_path: Path) -> None:
    path = tmp_path / "backbone.pth"
    torch.save({k: v for k, v in net.state_dict().items() if "num_batches_tracked" not in k}, path)
    assert load_arcface(path, arch=list(LAYERS)).layers == LAYERS


def test_pth_with_another_architecture_is_refused(net: IResNet, tmp_path: Path) -> None:
    path = tmp_path / "backbone.pth"
    torch.save(net.state_dict(), path)
    with pytest.raises(RefFaceError, match=re.escape(str(path)) + ".*not the requested r50"):
        load_arcface(path, arch="r50")
    with pytest.raises(RefFaceError, match="Unknown ArcFace architecture"):
        load_arcface(path, arch="r42")


def test_pth_with_a_wrong_shape_names_the_first_mismatch(net: IResNet, tmp_path: Path) -> None:
    state = net.state_dict()
    state["layer2.1.conv1.weight"] = torch.zeros(128, 128, 1, 1)
    path = tmp_path / "backbone.pth"
    torch.save(state, path)
    with pytest.raises(RefFaceError, match=re.escape(str(path)) + ".*layer2.1.conv1.weight"):
        load_arcface(path)


# -------------------------------------------------------------------------------------------- ONNX files
def test_onnx_export_was_folded(onnx_file: Path) -> None:
    import onnx

    graph = onnx.load(str(onnx_file)).graph
    convs = [node for node in graph.node if node.op_type == "Conv"]
    norms = [node for node in graph.node if node.op_type == "BatchNormalization"]
    assert all(len(node.input) == 3 for node in convs)  # every conv carries its folded BN as a bias
    assert len(norms) == sum(LAYERS) + 2  # only each block's bn1, the final bn2 and features remain


def test_onnx_matches_torch(onnx_file: Path, net: IResNet, reference: torch.Tensor) -> None:
    loaded = load_arcface(onnx_file)
    assert loaded.layers == LAYERS
    with torch.no_grad():
        raw = loaded.preprocess(images(2, 64))
        got, want = loaded.backbone(raw), net(raw)
    assert (got - want).abs().max() < 1e-4 * want.abs().max()  # raw features, before normalisation
    assert (F.normalize(got, dim=1) - reference).abs().max() < 1e-4


def _with_input_normalisation(source: Path, target: Path, mean: float, scale: float) -> Path:
    """Prepend insightface's MXNet-style (x - mean) * scale on 0..255 pixels to an exported graph."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(source))
    graph = model.graph
    graph.initializer.extend(
        [numpy_helper.from_array(torch.tensor(value).numpy(), name) for name, value in (("m", mean), ("s", scale))]
    )
    nodes = [
        helper.make_node("Sub", ["data", "m"], ["centred"], name="_minusscalar0"),
        helper.make_node("Mul", ["centred", "s"], ["input"], name="_mulscalar0"),
    ]
    for node in reversed(nodes):
        graph.node.insert(0, node)
    graph.input[0].name = "data"
    onnx.save(model, str(target))
    return target


def test_onnx_without_folding_matches_torch(net: IResNet, reference: torch.Tensor, tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    import onnx

    path = export_onnx(net, tmp_path / "unfolded.onnx", opset=17, fold=False)
    ops = [node.op_type for node in onnx.load(str(path)).graph.node]
    assert ops.count("BatchNormalization") == 3 * sum(LAYERS) + 4 + 3  # blocks, shortcuts, stem + bn2 + features
    assert "Unsqueeze" in ops  # PReLU slopes reshaped in the graph
    loaded = load_arcface(path)
    with torch.no_grad():
        assert (loaded(images(2, 64)) - reference).abs().max() < 1e-4


def test_onnx_input_normalisation_is_folded(onnx_file: Path, embedder: ArcFaceEmbedder, tmp_path: Path) -> None:
    # insightface's MXNet conversions: (pixels - 127.5) * 0.0078125 on 0..255 input, i.e. 0.99609375 * x for
    # x in [-1, 1]; the preprocessing is linear, so that equals the torch network on scaled images.
    path = _with_input_normalisation(onnx_file, tmp_path / "normalised.onnx", 127.5, 0.0078125)
    loaded = load_arcface(path)
    x = images(1, 64)
    with torch.no_grad():
        assert (loaded(x) - embedder(x * 127.5 * 0.0078125)).abs().max() < 1e-4


@pytest.fixture(scope="module")
def other_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small ONNX network that is not an IResNet."""
    pytest.importorskip("onnx")
    torch.manual_seed(0)
    other = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    return export_onnx(other, tmp_path_factory.mktemp("other") / "other.onnx")


def test_onnx_input_offset_that_cannot_be_folded_is_refused(other_onnx: Path, tmp_path: Path) -> None:
    path = _with_input_normalisation(other_onnx, tmp_path / "offset.onnx", 100.0, 1 / 127.5)
    with pytest.raises(RefFaceError, match=re.escape(str(path)) + ".*offset"):
        load_arcface(path)


def test_onnx_of_another_network_is_refused(other_onnx: Path) -> None:
    with pytest.raises(RefFaceError, match=re.escape(str(other_onnx)) + ".*IResNet layout"):
        load_arcface(other_onnx)


def test_onnx_with_a_wrong_stride_names_the_node(onnx_file: Path, tmp_path: Path) -> None:
    import onnx

    model = onnx.load(str(onnx_file))
    shortcut = next(node for node in model.graph.node if node.op_type == "Conv" and "downsample" in node.name)
    next(attribute for attribute in shortcut.attribute if attribute.name == "strides").ints[:] = [1, 1]
    path = tmp_path / "stride.onnx"
    onnx.save(model, str(path))
    with pytest.raises(RefFaceError, match=re.escape(str(path)) + ".*residual block 1.*stride 1"):
        load_arcface(path)


def test_onnx_needs_the_onnx_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\x08\x07")
    monkeypatch.setitem(sys.modules, "onnx", None)  # makes `import onnx` fail
    with pytest.raises(RefFaceError, match=re.escape(str(path)) + ".*pip install onnx"):
        load_arcface(path)


def test_onnx_with_another_architecture_is_refused(onnx_file: Path) -> None:
    with pytest.raises(RefFaceError, match="not the requested r100"):
        load_arcface(onnx_file, arch="iresnet100")


# -------------------------------------------------------------------------------------------- bad files
def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(RefFaceError, match=re.escape(str(tmp_path / "nope.pth")) + " does not exist"):
        load_arcface(tmp_path / "nope.pth")


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(RefFaceError, match=re.escape(str(tmp_path)) + " is a directory"):
        load_arcface(tmp_path)


@pytest.mark.parametrize("suffix", [".pth", ".onnx"])
def test_random_bytes(tmp_path: Path, suffix: str) -> None:
    if suffix == ".onnx":
        pytest.importorskip("onnx")
    path = tmp_path / f"garbage{suffix}"
    path.write_bytes(
        torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(5)).byte().numpy().tobytes()
    )
    with pytest.raises(RefFaceError, match=re.escape(str(path))):
        load_arcface(path)


def test_state_dict_of_another_network(tmp_path: Path) -> None:
    path = tmp_path / "resnet.pth"
    torch.save(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).state_dict(), path)
    with pytest.raises(RefFaceError, match=re.escape(str(path)) + ".*not an arcface_torch IResNet"):
        load_arcface(path)


def test_pickled_module_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "module.pth"
    torch.save(nn.Linear(2, 2), path)  # needs full unpickling, which weights_only=True refuses
    with pytest.raises(RefFaceError, match=re.escape(str(path))):
        load_arcface(path)


# -------------------------------------------------------------------------------------------- default weights
def test_default_weights_are_pinned() -> None:
    assert ARCFACE_R50_WEIGHTS.url.startswith("https://huggingface.co/")
    assert re.fullmatch(r"[0-9a-f]{64}", ARCFACE_R50_WEIGHTS.sha256)
    assert "non-commercial" in ARCFACE_R50_WEIGHTS.licence


def test_default_arcface_loads_what_ensure_weights_returns(
    net: IResNet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "cached.pth"
    torch.save(net.state_dict(), path)
    monkeypatch.setattr(arcface, "ensure_weights", lambda weight: path)
    assert default_arcface(device="cpu").layers == LAYERS
