"""FaceNet as an identity metric, offline: refface's Inception-ResNet-v1 with random weights in the released
layout, its loading, and the metric against a direct computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from refface.errors import RefFaceError
from refface.evaluation.identity_metrics import FaceNetSimilarity
from refface.evaluation.registry import build_metrics
from refface.face.facenet import FACE_SQUARE, FaceNetEmbedder, load_facenet
from refface.models.inception_resnet_v1 import InceptionResnetV1

# Names of facenet-pytorch's released state dict, as its loader expects them.
RELEASED_KEYS = (
    "conv2d_1a.conv.weight",
    "conv2d_4b.bn.running_var",
    "repeat_1.4.branch2.2.conv.weight",
    "repeat_1.0.conv2d.bias",
    "mixed_6a.branch1.2.bn.weight",
    "repeat_2.9.branch1.2.conv.weight",
    "mixed_7a.branch2.2.conv.weight",
    "repeat_3.4.conv2d.weight",
    "block8.branch1.1.conv.weight",
    "last_linear.weight",
    "last_bn.running_mean",
)


@pytest.fixture(scope="module")
def network() -> InceptionResnetV1:
    torch.manual_seed(0)
    model = InceptionResnetV1()
    for module in model.modules():  # batch-norm statistics of real inputs: embeddings then differ between images
        if isinstance(module, (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d)):
            module.momentum = None
    smooth = F.interpolate(torch.rand(12, 3, 20, 20), size=160, mode="bilinear") * 2 - 1
    with torch.no_grad():
        model.train()(smooth)
    return model.eval()


def test_the_network_has_the_released_layout_and_gives_unit_embeddings(network):
    state = network.state_dict()
    assert set(RELEASED_KEYS) <= set(state)
    assert state["repeat_1.0.branch1.1.conv.weight"].shape == (32, 32, 3, 3)
    assert state["repeat_2.0.branch1.1.conv.weight"].shape == (128, 128, 1, 7)
    assert state["block8.conv2d.weight"].shape == (1792, 384, 1, 1) and state["last_linear.weight"].shape == (512, 1792)
    with torch.no_grad():
        embeddings = network(torch.randn(3, 3, 160, 160))
    assert embeddings.shape == (3, 512)
    torch.testing.assert_close(embeddings.norm(dim=1), torch.ones(3))
    assert not torch.allclose(embeddings[0], embeddings[1])


def test_the_released_file_loads_without_its_classifier(network, tmp_path):
    released = {**network.state_dict(), "logits.weight": torch.randn(8631, 512), "logits.bias": torch.zeros(8631)}
    torch.save(released, tmp_path / "vggface2.pt")
    loaded = load_facenet(tmp_path / "vggface2.pt")
    images = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        assert torch.equal(loaded(images), network(images))
    broken = dict(network.state_dict())
    del broken["repeat_3.2.conv2d.weight"]
    torch.save(broken, tmp_path / "broken.pt")
    with pytest.raises(RefFaceError, match=r"broken\.pt have the wrong shapes .*repeat_3\.2\.conv2d\.weight"):
        load_facenet(tmp_path / "broken.pt")


def _direct_embedding(network, image: np.ndarray) -> np.ndarray:
    """The face square cut with numpy, averaged down to 160 px, standardised as FaceNet was trained."""
    side = image.shape[0]
    left, top, right, bottom = (round(v * side) for v in FACE_SQUARE)
    square = torch.from_numpy(image[top:bottom, left:right].astype(np.float32)).permute(2, 0, 1)[None]
    small = F.adaptive_avg_pool2d(square, 160)
    with torch.no_grad():
        return network((small - 127.5) / 128.0)[0].numpy()


@pytest.mark.parametrize("size", [256, 512])
def test_the_metric_is_the_cosine_of_the_faces_embeddings(network, size):
    rng = np.random.default_rng(size)
    preds = [rng.integers(0, 255, (size, size, 3), dtype=np.uint8) for _ in range(3)]
    gts = [np.clip(p.astype(int) + rng.integers(-40, 40, p.shape), 0, 255).astype(np.uint8) for p in preds[:2]]
    gts.append(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
    metric = FaceNetSimilarity(FaceNetEmbedder(network))
    scores = metric.compute(preds, gts, [None] * 3)
    for score, pred, gt in zip(scores, preds, gts, strict=True):
        a, b = _direct_embedding(network, pred), _direct_embedding(network, gt)
        assert score == pytest.approx(float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)), abs=1e-5)
    assert metric.name == "ids_facenet" and min(scores[:2]) > scores[2]  # the noisy copies are closer


def test_without_its_weights_the_metric_says_why(tmp_path, monkeypatch):
    monkeypatch.setenv("REFFACE_CACHE", str(tmp_path))
    built, unavailable = build_metrics(["ids_facenet", "psnr"], "cpu", download=False, arcface_weights=None,
                                       has_refs=False)  # fmt: skip
    assert [m.name for m in built] == ["psnr"]
    assert "20180402-114759-vggface2.pt" in unavailable["ids_facenet"]
    assert "downloads are off" in unavailable["ids_facenet"]
