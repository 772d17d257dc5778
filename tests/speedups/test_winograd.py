"""Winograd F(4x4, 3x3): the same function as the direct 3x3 convolution, taken only where it should be."""

from __future__ import annotations

import threading
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from refface import speedups
from refface.speedups import nnpack_conv, winograd
from refface.speedups.winograd import (
    F4X3,
    POINTS,
    WinogradConv2d,
    cook_toom_matrices,
    install,
    kept_transformed_weights,
    takes_winograd,
    winograd_conv3x3,
)
from tests.conftest import make_tiny_pipeline, restore_official_case

TOL = 1e-4  # the official fixture's tolerance


@pytest.mark.parametrize(
    ("output_tile", "points"),
    [(2, (0, 1, -1)), (4, POINTS), (4, (0, 1, -1, 2, -2)), (3, (0, 1, -1, Fraction(1, 2)))],
)
def test_matrices_compute_1d_correlation(output_tile, points):
    points = tuple(Fraction(p) for p in points)
    output_t, kernel_t, input_t = cook_toom_matrices(output_tile, 3, points)
    generator = torch.Generator().manual_seed(output_tile)
    for _ in range(3):
        kernel = torch.randn(3, dtype=torch.float64, generator=generator)
        data = torch.randn(output_tile + 2, dtype=torch.float64, generator=generator)
        want = torch.stack([data[i : i + 3] @ kernel for i in range(output_tile)])
        got = output_t @ ((kernel_t @ kernel) * (input_t @ data))
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_matrices_refuse_wrong_points():
    with pytest.raises(ValueError, match="5 distinct finite points"):
        cook_toom_matrices(4, 3, (Fraction(0), Fraction(1), Fraction(1), Fraction(2), Fraction(-2)))
    with pytest.raises(ValueError, match="needs 5"):
        cook_toom_matrices(4, 3, (Fraction(0), Fraction(1)))


# batch > 1, sizes that are and are not multiples of the tile, chunks down to one tile row
@pytest.mark.parametrize(
    ("shape", "out_channels", "chunk_bytes"),
    [((1, 5, 8, 8), 7, 2**30), ((3, 4, 13, 22), 6, 1), ((2, 6, 17, 9), 5, 20_000), ((2, 3, 4, 31), 8, 2**30)],
)
@pytest.mark.parametrize("with_bias", [True, False])
def test_equals_direct_convolution_in_float64(shape, out_channels, chunk_bytes, with_bias):
    generator = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(shape, dtype=torch.float64, generator=generator)
    weight = torch.randn(out_channels, shape[1], 3, 3, dtype=torch.float64, generator=generator)
    bias = torch.randn(out_channels, dtype=torch.float64, generator=generator) if with_bias else None
    matrices = F4X3
    got = winograd_conv3x3(x, weight, bias, matrices, chunk_bytes=chunk_bytes)
    assert got.shape == (shape[0], out_channels, shape[2], shape[3]) and got.is_contiguous()
    torch.testing.assert_close(got, F.conv2d(x, weight, bias, padding=1), rtol=0, atol=1e-11)


@pytest.mark.parametrize("shape", [(2, 128, 36, 40), (1, 256, 24, 30), (3, 160, 17, 9)])
def test_float32_rounding_stays_within_a_few_dozen_unit_roundoffs(shape):
    # The bound has the textbook form of a dot product's error, c * eps * sum(|x| |w|), and does not lean
    # on how accurately this CPU's direct convolution rounds (AVX-512 oneDNN kernels stay under 1 eps of
    # that sum). refface's points measure 15-40 eps; badly conditioned ones, (0, +-1, +-3), about 90.
    generator = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(shape, generator=generator)
    weight = torch.randn(shape[1], shape[1], 3, 3, generator=generator) / (3 * shape[1] ** 0.5)
    bias = torch.randn(shape[1], generator=generator)
    exact = F.conv2d(x.double(), weight.double(), bias.double(), padding=1)
    magnitude = F.conv2d(x.double().abs(), weight.double().abs(), bias.double().abs(), padding=1)
    error = (winograd_conv3x3(x, weight, bias, F4X3).double() - exact).abs() / magnitude
    assert error.max() < 64 * torch.finfo(torch.float32).eps


def _conv(channels: int, **kwargs) -> nn.Conv2d:
    torch.manual_seed(0)
    return nn.Conv2d(channels, channels, kwargs.pop("kernel_size", 3), padding=kwargs.pop("padding", 1), **kwargs)


def test_install_swaps_only_plain_3x3_convolutions_and_keeps_weights():
    model = nn.Sequential(
        _conv(8), _conv(8, stride=2), _conv(8, kernel_size=1, padding=0), _conv(8, groups=2), _conv(8, dilation=2)
    )
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    assert install(model) == 1
    assert [type(module) is WinogradConv2d for module in model] == [True, False, False, False, False]
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(model.state_dict()[name], tensor) for name, tensor in before.items())
    assert install(model) == 1  # installing twice is harmless


def test_takes_winograd_only_for_large_inference_inputs():
    conv = _conv(128)
    large, small = torch.randn(1, 128, 32, 32), torch.randn(1, 128, 16, 16)
    with torch.no_grad():
        assert takes_winograd(conv, large) and not takes_winograd(conv, small)
        assert not takes_winograd(_conv(64), torch.randn(1, 64, 64, 64))
        assert not takes_winograd(conv, large.half())
    assert not takes_winograd(conv, large)  # the weight needs a gradient: training keeps the direct path
    conv.requires_grad_(False)
    assert takes_winograd(conv, large) and not takes_winograd(conv, large.requires_grad_())


def _recording(real, seen: list[torch.Size]):
    """`real`, noting the shape of its first argument in `seen` at every call."""
    return lambda *args, **kwargs: seen.append(args[0].shape) or real(*args, **kwargs)


@pytest.fixture
def winograd_everywhere(monkeypatch) -> dict[str, list[torch.Size]]:
    """Every eligible convolution takes a Winograd path; returns the input shape of each call per path
    ("f4x3": refface's F(4x4, 3x3), "nnpack": NNPACK's F(6x6, 3x3) on large float32 maps, wherever this build
    has NNPACK, also on CPUs where F(4x4, 3x3) is faster)."""
    calls: dict[str, list[torch.Size]] = {"f4x3": [], "nnpack": []}
    monkeypatch.setattr(nnpack_conv, "preferred", lambda: nnpack_conv.available())
    monkeypatch.setattr(winograd, "winograd_conv3x3", _recording(winograd.winograd_conv3x3, calls["f4x3"]))
    monkeypatch.setattr(nnpack_conv, "conv3x3", _recording(nnpack_conv.conv3x3, calls["nnpack"]))
    monkeypatch.setattr(winograd, "MIN_CHANNELS", 1)
    monkeypatch.setattr(winograd, "MIN_PIXELS", 1)
    monkeypatch.setattr(winograd, "KEPT_MIN_SIDE", 1)
    return calls


def test_module_dispatch_matches_direct_and_keeps_gradients(winograd_everywhere):
    calls = winograd_everywhere["f4x3"]
    conv = _conv(6)
    install(conv)
    x = torch.randn(3, 6, 9, 12, requires_grad=True)
    with torch.no_grad():
        fast = conv(x)
        with speedups.disabled():
            plain = conv(x)
    assert len(calls) == 1
    torch.testing.assert_close(fast, plain, rtol=0, atol=1e-5)
    conv(x).square().sum().backward()  # with gradients: the direct path, which autograd differentiates
    assert len(calls) == 1 and x.grad is not None and conv.weight.grad is not None


def test_large_float32_maps_take_nnpack_and_the_rest_f4x3(winograd_everywhere, monkeypatch):
    calls, has_nnpack = winograd_everywhere, nnpack_conv.available()
    conv = _conv(4).requires_grad_(False)
    install(conv)
    large, small = torch.randn(2, 4, 64, 70), torch.randn(3, 4, 63, 64)
    with torch.no_grad():
        outputs = [conv(large), conv(small), conv.double()(large.double())]
        with speedups.disabled():
            wanted = [conv(large.double()), conv(small.double()), conv(large.double())]
        monkeypatch.setattr(nnpack_conv, "available", lambda: False)
        outputs.append(conv.float()(large))
    wanted.append(wanted[0])
    if has_nnpack:
        assert calls == {"nnpack": [large.shape], "f4x3": [small.shape, large.shape, large.shape]}
    else:
        assert calls["f4x3"] == [large.shape, small.shape, large.shape, large.shape] and not calls["nnpack"]
    for got, want in zip(outputs, wanted, strict=True):
        torch.testing.assert_close(got.double(), want.double(), rtol=0, atol=1e-4)


def test_kept_transformed_weights_are_made_once_and_follow_weight_changes(monkeypatch):
    transforms, computed = [], []
    monkeypatch.setattr(winograd, "transform_weight", _recording(winograd.transform_weight, transforms))
    monkeypatch.setattr(winograd, "winograd_conv3x3", _recording(winograd.winograd_conv3x3, computed))
    torch.manual_seed(1)
    conv = nn.Conv2d(128, 128, 3, padding=1).requires_grad_(False)
    install(conv)
    x, small = torch.randn(2, 128, 32, 36), torch.randn(3, 128, 16, 20)
    with torch.no_grad():
        with speedups.disabled():
            plain, plain_small = conv(x), conv(small)
        conv(small)
        assert transforms == []  # 16 x 16 maps stay direct when every call would transform the weight
        unkept = conv(x)
        with kept_transformed_weights():
            kept = [conv(x), conv(x), conv(small)]
            thin = conv(torch.randn(1, 128, 8, 64))  # 8 rows: direct even with the weight kept
            conv.weight.mul_(2)  # changed in place: transformed again
            doubled = conv(x)
        assert transforms == [conv.weight.shape] * 3
        conv(x)
        assert len(transforms) == 4  # the kept transforms are gone after the block
    for got in [unkept, *kept[:2]]:
        torch.testing.assert_close(got, plain, rtol=0, atol=2e-4)
    torch.testing.assert_close(kept[2], plain_small, rtol=0, atol=2e-4)
    assert thin.shape == (1, 128, 8, 64) and thin.shape not in computed and small.shape in computed
    torch.testing.assert_close(
        doubled - conv.bias.view(1, -1, 1, 1), 2 * (plain - conv.bias.view(1, -1, 1, 1)), rtol=0, atol=4e-4
    )


def test_kept_transformed_weights_belong_to_their_thread():
    seen = []
    with kept_transformed_weights():
        inside = winograd._KEPT.get()
        worker = threading.Thread(target=lambda: seen.append(winograd._KEPT.get()))
        worker.start()
        worker.join()
    assert inside == {} and seen == [None] and winograd._KEPT.get() is None


def test_disabled_speedups_come_back_after_an_error(winograd_everywhere):
    calls = winograd_everywhere["f4x3"]
    model = nn.Sequential(_conv(4), _conv(4)).requires_grad_(False)
    install(model)
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        with pytest.raises(RuntimeError, match="inside"), speedups.disabled():
            model(x)
            assert not speedups.active() and calls == []
            raise RuntimeError("inside")
        assert speedups.active()
        model(x)
    assert all(type(module) is WinogradConv2d for module in model) and len(calls) == 2


def test_pipelines_install_winograd():
    pipe = make_tiny_pipeline()
    convs = [m for m in [*pipe.unet.modules(), *pipe.vqvae.modules()] if isinstance(m, nn.Conv2d)]
    swapped = [m for m in convs if type(m) is WinogradConv2d]
    assert swapped and all(m.kernel_size == (3, 3) and m.stride == (1, 1) for m in swapped)
    assert any(m.stride == (2, 2) for m in convs if type(m) is nn.Conv2d)  # downsampling stays direct


def test_official_fixture_through_winograd_everywhere(winograd_everywhere, slim_pipeline, slim_case):
    """Every eligible convolution of the official-slim restoration (encoders, U-Net, decoder) on Winograd."""
    calls = winograd_everywhere
    out = restore_official_case(slim_pipeline, slim_case)
    expected = slim_case["expected"]
    assert len(calls["f4x3"]) > 100  # the U-Net's steps
    if nnpack_conv.available():
        assert any(shape[-1] >= 64 for shape in calls["nnpack"])  # the VQGAN's images
    else:
        assert any(shape[-1] >= 64 for shape in calls["f4x3"]) and not calls["nnpack"]
    assert (out.latents - expected["latent"]).abs().max() < TOL
    assert (out.pixels - expected["image"]).abs().max() < TOL
