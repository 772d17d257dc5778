"""NNPACK's F(6x6, 3x3) in strips: the direct convolution's function, with the same numbers in strips as in one call."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from refface.speedups import nnpack_conv
from refface.speedups.nnpack_conv import OUTPUT_TILE, TILE_POINTS, conv3x3, strip_rows

needs_nnpack = pytest.mark.skipif(not nnpack_conv.available(), reason="this PyTorch build or CPU has no NNPACK")


def _case(shape: tuple[int, ...], out_channels: int, seed: int) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=generator)
    weight = torch.randn(out_channels, shape[1], 3, 3, generator=generator) / (3 * shape[1] ** 0.5)
    bias = torch.randn(out_channels, generator=generator)
    return x, weight, bias


@needs_nnpack
# batch > 1, maps that are and are not whole 6-row tiles, strips down to one tile row, odd channel counts
@pytest.mark.parametrize(
    ("shape", "out_channels", "io_bytes"),
    [((1, 16, 24, 24), 8, 2**30), ((3, 5, 13, 22), 7, 1), ((2, 12, 31, 9), 6, 60_000), ((2, 8, 40, 17), 16, 2**30)],
)
@pytest.mark.parametrize("with_bias", [True, False])
def test_equals_the_direct_convolution(shape, out_channels, io_bytes, with_bias):
    x, weight, bias = _case(shape, out_channels, sum(shape))
    bias = bias if with_bias else None
    with torch.no_grad():
        got = conv3x3(x, weight, bias, io_bytes=io_bytes)
    exact = F.conv2d(x.double(), weight.double(), None if bias is None else bias.double(), padding=1)
    assert got.shape == exact.shape and got.is_contiguous()
    assert (got.double() - exact).abs().max() < 1e-4  # float32 rounding on unit-scale outputs


@needs_nnpack
@pytest.mark.parametrize("height", [36, 41])
def test_strips_give_the_numbers_of_one_call(height):
    x, weight, bias = _case((2, 32, height, 29), 24, height)
    with torch.no_grad():
        whole = conv3x3(x, weight, bias, io_bytes=2**30)
        tile_rows = conv3x3(x, weight, bias, io_bytes=1)  # one 6-row tile per call
        two_tiles = conv3x3(x, weight, bias, io_bytes=2 * TILE_POINTS * 4 * 56 * 5)
    assert torch.equal(whole, tile_rows) and torch.equal(whole, two_tiles)


def test_strip_rows_are_whole_tiles_within_the_budget():
    # 128 channels in and out over 512 columns: 86 tile columns, 5.6 MB of transformed input and output per tile row
    per_tile_row = 4 * TILE_POINTS * 256 * 86
    assert strip_rows(128, 128, 512, io_bytes=64 * 2**20) == OUTPUT_TILE * (64 * 2**20 // per_tile_row)
    assert strip_rows(128, 128, 512, io_bytes=1) == OUTPUT_TILE  # never less than one tile row
    for channels, width, budget in [(3, 7, 10_000), (256, 256, 2**25), (512, 2560, 2**26)]:
        rows = strip_rows(channels, channels, width, io_bytes=budget)
        assert rows % OUTPUT_TILE == 0
        assert rows == OUTPUT_TILE or rows // OUTPUT_TILE * 4 * TILE_POINTS * 2 * channels * -(-width // 6) <= budget


def test_available_is_false_without_the_probe(monkeypatch):
    monkeypatch.delattr(torch, "_nnpack_available")
    assert not nnpack_conv.available()


@pytest.mark.parametrize(("capability", "wanted"), [("AVX2", True), ("AVX512", False), ("DEFAULT", True)])
def test_preferred_only_where_pytorchs_own_kernels_are_no_wider_than_avx2(monkeypatch, capability, wanted):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(nnpack_conv, "available", lambda: True)
    assert nnpack_conv.preferred() is wanted
    monkeypatch.setattr(nnpack_conv, "available", lambda: False)
    assert not nnpack_conv.preferred()
