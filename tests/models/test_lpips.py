"""LPIPS-VGG in plain torch: distance properties, frozen weights, and loading the public weight-file layouts."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from refface.errors import RefFaceError
from refface.models.lpips import (
    LPIPS,
    LPIPS_VGG_WEIGHTS,
    TAP_CHANNELS,
    VGG16_WEIGHTS,
    default_lpips,
    load_lpips,
    random_lpips,
)

# torchvision's vgg16 `features`: the index of every 3x3 convolution and its (out, in) channels.
TORCHVISION_CONVS = {
    0: (64, 3),
    2: (64, 64),
    5: (128, 64),
    7: (128, 128),
    10: (256, 128),
    12: (256, 256),
    14: (256, 256),
    17: (512, 256),
    19: (512, 512),
    21: (512, 512),
    24: (512, 512),
    26: (512, 512),
    28: (512, 512),
}


def torchvision_vgg16_state(seed: int) -> dict[str, torch.Tensor]:
    """The `features.*` entries of vgg16-397923af.pth, with random values, plus the last classifier layer.

    The real file also has classifier.0 and classifier.3 (25088x4096 and 4096x4096); the loader ignores all
    classifier entries, and these two would make the test file ~470 MB, so only classifier.6 stands in for them.
    """
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for index, (out_channels, in_channels) in TORCHVISION_CONVS.items():
        fan_in = in_channels * 9
        state[f"features.{index}.weight"] = (
            torch.randn(out_channels, in_channels, 3, 3, generator=generator) * (2.0 / fan_in) ** 0.5
        )
        state[f"features.{index}.bias"] = torch.randn(out_channels, generator=generator) * 0.01
    state["classifier.6.weight"] = torch.zeros(1000, 4096)
    state["classifier.6.bias"] = torch.zeros(1000)
    return state


def lpips_v01_state(seed: int) -> dict[str, torch.Tensor]:
    """The entries of LPIPS's v0.1 vgg.pth: one non-negative 1x1 convolution per tap, behind a dropout slot."""
    generator = torch.Generator().manual_seed(seed)
    return {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1, generator=generator) for k, c in enumerate(TAP_CHANNELS)}


@pytest.fixture(scope="module")
def model() -> LPIPS:
    return random_lpips(0)


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("lpips")
    vgg, lin = folder / "vgg16-397923af.pth", folder / "vgg.pth"
    torch.save(torchvision_vgg16_state(1), vgg)
    torch.save(lpips_v01_state(2), lin)
    return vgg, lin


def images(batch: int, size: int, seed: int) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize(("batch", "size"), [(2, 16), (3, 24), (2, 32)])
def test_distance_is_zero_for_identical_images_and_positive_symmetric_otherwise(model, batch, size):
    x, y = images(batch, size, 1), images(batch, size, 2)
    with torch.no_grad():
        same, forward, backward = model(x, x.clone()), model(x, y), model(y, x)
    assert same.shape == forward.shape == (batch,)
    assert torch.all(same == 0)
    assert torch.all(forward > 0)
    torch.testing.assert_close(forward, backward)


@pytest.mark.parametrize(("batch", "size"), [(2, 16), (3, 24), (2, 40)])
def test_more_distortion_gives_a_larger_distance(model, batch, size):
    x = images(batch, size, 3)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        distances = [model(x, x + scale * noise) for scale in (0.02, 0.1, 0.5)]
    assert torch.all(distances[0] < distances[1])
    assert torch.all(distances[1] < distances[2])


def test_each_item_is_scored_on_its_own(model):
    x, y = images(3, 16, 5), images(3, 16, 6)
    with torch.no_grad():
        together = model(x, y)
        alone = torch.cat([model(x[i : i + 1], y[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(together, alone)


def test_frozen_but_passes_gradients_to_its_input(model):
    assert not any(p.requires_grad for p in model.parameters())
    model.train()
    assert not model.training
    x = images(2, 16, 7).requires_grad_(True)
    model(x, images(2, 16, 8)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())


def test_all_zero_features_give_finite_gradients(model):
    """A constant black image makes whole feature vectors zero; the channel norm must not turn that into NaN."""
    x = torch.full((2, 3, 16, 16), -1.0, requires_grad=True)
    model(x, images(2, 16, 9)).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_mismatched_inputs_are_refused(model):
    with pytest.raises(RefFaceError, match="same shape"):
        model(images(2, 32, 1), images(2, 16, 1))


def test_state_dict_names_are_those_of_torchvision_and_lpips(model):
    expected = {f"features.{i}.{kind}" for i in TORCHVISION_CONVS for kind in ("weight", "bias")}
    expected |= {f"lin{k}.model.1.weight" for k in range(5)}
    assert set(model.state_dict()) == expected


def test_loads_the_public_file_layouts(weight_files):
    vgg, lin = weight_files
    loaded = load_lpips(vgg, lin)
    vgg_state, lin_state = torchvision_vgg16_state(1), lpips_v01_state(2)
    for index in TORCHVISION_CONVS:
        torch.testing.assert_close(loaded.features[index].weight, vgg_state[f"features.{index}.weight"])
        torch.testing.assert_close(loaded.features[index].bias, vgg_state[f"features.{index}.bias"])
    torch.testing.assert_close(loaded.lin3.model[1].weight, lin_state["lin3.model.1.weight"])
    assert not any(p.requires_grad for p in loaded.parameters()) and not loaded.training
    x, y = images(2, 16, 1), images(2, 16, 2)
    with torch.no_grad():
        assert torch.all(loaded(x, y) > 0)


def _mutated(tmp_path: Path, state: dict[str, torch.Tensor], name: str) -> Path:
    path = tmp_path / name
    torch.save(state, path)
    return path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s.__setitem__("features.28.weight", torch.zeros(512, 256, 3, 3)), "features.28.weight of shape"),
        (lambda s: s.pop("features.10.bias"), "lacks 1 of the expected weights"),
        (lambda s: s.__setitem__("features.1.running_mean", torch.zeros(64)), "features.1.running_mean"),
    ],
    ids=["wrong-shape", "missing", "batchnorm-vgg"],
)
def test_a_mismatched_vgg_file_is_refused_naming_it(tmp_path, weight_files, change, message):
    state = torchvision_vgg16_state(1)
    change(state)
    bad = _mutated(tmp_path, state, "not-vgg16.pth")
    with pytest.raises(RefFaceError, match=re.escape(message)) as caught:
        load_lpips(bad, weight_files[1])
    assert str(bad) in str(caught.value)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s.pop("lin4.model.1.weight"), "lacks 1 of the expected weights"),
        (lambda s: s.__setitem__("lin0.model.1.weight", torch.zeros(1, 32, 1, 1)), "lin0.model.1.weight of shape"),
        (lambda s: s.__setitem__("lin5.model.1.weight", torch.zeros(1, 8, 1, 1)), "lin5.model.1.weight"),
    ],
    ids=["missing", "wrong-shape", "extra"],
)
def test_a_mismatched_lpips_file_is_refused_naming_it(tmp_path, weight_files, change, message):
    state = lpips_v01_state(2)
    change(state)
    bad = _mutated(tmp_path, state, "not-lpips.pth")
    with pytest.raises(RefFaceError, match=re.escape(message)) as caught:
        load_lpips(weight_files[0], bad)
    assert str(bad) in str(caught.value)


def test_unreadable_or_missing_files_are_refused_naming_them(tmp_path, weight_files):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(RefFaceError) as caught:
        load_lpips(garbage, weight_files[1])
    assert str(garbage) in str(caught.value)
    missing = tmp_path / "missing.pth"
    with pytest.raises(RefFaceError) as caught:
        load_lpips(weight_files[0], missing)
    assert str(missing) in str(caught.value)


def test_default_lpips_reads_the_cached_files_without_downloading(tmp_path, weight_files, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("default_lpips tried to download although the files are cached")

    import dataclasses

    from refface.models import lpips as lpips_module
    from refface.weights import sha256_of

    monkeypatch.setattr("refface.weights._fetch", no_network)
    for source, weight in zip(weight_files, (VGG16_WEIGHTS, LPIPS_VGG_WEIGHTS), strict=True):
        (tmp_path / weight.name).write_bytes(source.read_bytes())
        # cached files are checked against the release's SHA-256: these random ones stand in for it
        stand_in = dataclasses.replace(weight, sha256=sha256_of(source))
        monkeypatch.setattr(lpips_module, "VGG16_WEIGHTS" if weight is VGG16_WEIGHTS else "LPIPS_VGG_WEIGHTS", stand_in)
    model = default_lpips(directory=tmp_path)
    torch.testing.assert_close(model.lin1.model[1].weight, lpips_v01_state(2)["lin1.model.1.weight"])


def test_weight_files_point_at_the_public_releases():
    assert VGG16_WEIGHTS.url == "https://download.pytorch.org/models/vgg16-397923af.pth"
    assert VGG16_WEIGHTS.sha256.startswith("397923af")  # torchvision names files after their hash prefix
    assert LPIPS_VGG_WEIGHTS.url.endswith("/lpips/weights/v0.1/vgg.pth")
    for weight in (VGG16_WEIGHTS, LPIPS_VGG_WEIGHTS):
        assert re.fullmatch(r"[0-9a-f]{64}", weight.sha256)
