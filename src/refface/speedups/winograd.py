"""Winograd F(4x4, 3x3) convolution for CPU inference (Lavin & Gray, 2016).

A stride-1, padding-1 3x3 convolution computed over 6x6 input tiles as 36 matrix products: 2.25
multiplications per output instead of 9. It is the same function as the direct convolution; the
rounding differs (against float64: about 3x the direct fp32 convolution's error on an AVX2 CPU; AVX-512
direct kernels round some 50x finer, and F(4x4, 3x3) stays within 40 unit roundoffs of sum |x||w|).
PyTorch's CPU convolution has no Winograd path, and most of ReF-LDM's time on CPU is spent in large
3x3 convolutions (the U-Net at 64x64 and 32x32, the VQGAN at up to 512x512), so this is where the
floating-point work can shrink without changing what is computed.

`install` swaps a model's eligible `nn.Conv2d` modules to `WinogradConv2d`, which keeps their
parameters and state dict; it takes a Winograd path only without gradients, on CPU, in float32 or
float64, and for shapes where it was measured faster (`takes_winograd`): NNPACK's F(6x6, 3x3) for
float32 maps from 64 x 64 on AVX2 CPUs (`refface.speedups.nnpack_conv`), this module's F(4x4, 3x3) otherwise.
`kept_transformed_weights` keeps each F(4x4, 3x3) weight transform for a block of code (a sampling
loop). `refface.speedups.disabled()` gives the direct path for a block of code (the official-path benchmark).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from fractions import Fraction

import torch
import torch.nn.functional as F
from torch import nn

from refface.speedups import nnpack_conv, switch

OUTPUT_TILE = 4
# Interpolation points of the Cook-Toom construction (plus the point at infinity). With 0, +-1, +-1/2 the
# measured error is no larger than with the textbook 0, +-1, +-2 and the transforms stay small.
POINTS = (Fraction(0), Fraction(1), Fraction(-1), Fraction(1, 2), Fraction(-1, 2))
MIN_CHANNELS = 128  # below this (and below MIN_PIXELS) the transforms cost more than they save
MIN_PIXELS = 32 * 32
KEPT_MIN_SIDE = 16  # with the transformed weight kept, F(4x4, 3x3) also wins on 16 x 16 maps (not on 8 x 8)
CHUNK_BYTES = 8 * 2**20  # transformed input per chunk of tile rows: bounds the extra memory
# From this map size on, NNPACK's F(6x6, 3x3) (`refface.speedups.nnpack_conv`) beats F(4x4, 3x3) on float32 on
# AVX2 CPUs even with its kernel transformed on every call; on the U-Net's 32 x 32 maps it does not.
NNPACK_MIN_PIXELS = 64 * 64


def cook_toom_matrices(output_tile: int, kernel: int, points: tuple[Fraction, ...]) -> tuple[torch.Tensor, ...]:
    """(A^T, G, B^T) in float64 with Y = A^T [(G g G^T) * (B^T d B)] A for 1D correlation F(m, r).

    Built from polynomial evaluation at `points` and infinity: A and G evaluate the output and kernel
    polynomials, B^T is the transpose of the interpolation (inverse Vandermonde) matrix.
    """
    tile = output_tile + kernel - 1
    if len(points) != tile - 1 or len(set(points)) != len(points):
        raise ValueError(f"F({output_tile}, {kernel}) needs {tile - 1} distinct finite points, got {points}.")

    def evaluation(terms: int) -> torch.Tensor:
        rows = [[float(point**power) for power in range(terms)] for point in points]
        rows.append([0.0] * (terms - 1) + [1.0])  # the point at infinity: the leading coefficient
        return torch.tensor(rows, dtype=torch.float64)

    input_transform = torch.linalg.inv(evaluation(tile)).T
    scale = input_transform.abs().amax(dim=1, keepdim=True)  # move row scales into G: B^T's entries stay <= 1
    return evaluation(output_tile).T.contiguous(), evaluation(kernel) * scale, (input_transform / scale).contiguous()


def transform_weight(weight: torch.Tensor, matrices: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """U = G w G^T for every (out, in) channel pair of a [K, C, 3, 3] weight: [n*n, K, C]."""
    kernel_t = matrices[1].to(weight.dtype)
    n = kernel_t.shape[0]
    out_channels, channels = weight.shape[:2]
    half = torch.mm(kernel_t, weight.permute(2, 3, 0, 1).reshape(3, -1)).view(n, 3, -1)
    return torch.matmul(kernel_t, half).view(n * n, out_channels, channels)


def winograd_conv3x3(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    matrices: tuple[torch.Tensor, ...],
    chunk_bytes: int = CHUNK_BYTES,
    transformed_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """`F.conv2d(x, weight, bias, padding=1)` for a [K, C, 3, 3] weight, over chunks of tile rows.

    `transformed_weight` is `transform_weight(weight, matrices)` when the caller kept it from an earlier call."""
    output_t, _, input_t = (matrix.to(x.dtype) for matrix in matrices)
    m, n = output_t.shape
    batch, channels, height, width = x.shape
    out_channels = weight.shape[0]
    tile_rows, tile_cols = -(-height // m), -(-width // m)
    if transformed_weight is None:
        transformed_weight = transform_weight(weight, matrices)
    out = x.new_empty(batch, out_channels, tile_rows * m, tile_cols * m)
    per_tile_row = n * n * channels * batch * tile_cols * x.element_size()
    rows_per_chunk = max(1, chunk_bytes // per_tile_row)
    for first in range(0, tile_rows, rows_per_chunk):
        rows = min(rows_per_chunk, tile_rows - first)
        tiles = rows * tile_cols * batch
        top, bottom = first * m - 1, (first + rows) * m + n - m - 1  # input rows the chunk's tiles cover
        window = F.pad(
            x[:, :, max(top, 0) : min(bottom, height)],
            (1, 1 + tile_cols * m - width, max(-top, 0), max(bottom - height, 0)),
        )  # zero padding of the whole input, made for this chunk only
        # tiles as [n, n, C, batch, rows, cols], then B^T d B along both tile axes
        d = window.unfold(2, n, m).unfold(3, n, m).permute(4, 5, 1, 0, 2, 3).reshape(n, -1)
        v = torch.matmul(input_t, torch.mm(input_t, d).view(n, n, -1)).view(n * n, channels, tiles)
        product = torch.bmm(transformed_weight, v)  # [n*n, K, tiles]
        y = torch.mm(output_t, product.view(n, -1)).view(m, n, -1)
        y = torch.matmul(output_t, y).view(m, m, out_channels, batch, rows, tile_cols)
        target = out[:, :, first * m : (first + rows) * m].view(batch, out_channels, rows, m, tile_cols, m)
        target.copy_(y.permute(3, 2, 4, 0, 5, 1))
    if bias is not None:
        out.add_(bias.view(1, -1, 1, 1))
    if tile_rows * m != height or tile_cols * m != width:
        out = out[:, :, :height, :width].contiguous()
    return out


F4X3 = cook_toom_matrices(OUTPUT_TILE, 3, POINTS)  # constants: built once, converted to the input's dtype per call


def eligible(conv: nn.Module) -> bool:
    """A plain stride-1 3x3 convolution with zero padding 1: the function Winograd F(4x4, 3x3) computes."""
    return (
        type(conv) in (nn.Conv2d, WinogradConv2d)
        and conv.kernel_size == (3, 3)
        and conv.stride == (1, 1)
        and conv.padding == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
    )


def takes_winograd(conv: nn.Conv2d, x: torch.Tensor, weights_kept: bool = False) -> bool:
    """Inference on CPU in float32/float64 for shapes where it was measured faster than the direct path
    (down to smaller maps when the transformed weights are kept, see `kept_transformed_weights`)."""
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64) or x.dim() != 4:
        return False
    if torch.is_grad_enabled() and (x.requires_grad or conv.weight.requires_grad):
        return False
    if min(conv.in_channels, conv.out_channels) < MIN_CHANNELS:
        return False
    if weights_kept:
        return min(x.shape[2], x.shape[3]) >= KEPT_MIN_SIDE
    return x.shape[2] * x.shape[3] >= MIN_PIXELS and min(x.shape[2], x.shape[3]) >= OUTPUT_TILE


def takes_nnpack(x: torch.Tensor) -> bool:
    """For an input `takes_winograd` accepts: float32 maps large enough for NNPACK, where NNPACK is available
    and faster than F(4x4, 3x3) on this CPU (`nnpack_conv.preferred`)."""
    return x.dtype == torch.float32 and x.shape[2] * x.shape[3] >= NNPACK_MIN_PIXELS and nnpack_conv.preferred()


# The transformed weights kept by the innermost `kept_transformed_weights` block of this thread or task
# (None outside one). A context variable, so concurrent restorations on one model keep their own.
_KEPT: ContextVar[dict[nn.Module, tuple[tuple, torch.Tensor]] | None] = ContextVar(
    "refface_winograd_kept", default=None
)


@contextmanager
def kept_transformed_weights() -> Iterator[None]:
    """Within the block, each F(4x4, 3x3) convolution transforms its weight once and keeps it.

    For a sampling loop, which runs the same U-Net at every step: the transform is a memory-bound pass
    over 4x the weight, a few ms per convolution, and with it paid once F(4x4, 3x3) also wins on 16 x 16
    maps; a guided step of the released model measured 11% faster. The kept weights cost 4x the weights
    of the convolutions that take this path (0.47 GB for the released U-Net) until the block ends. A
    weight changed in place (its version moves) is transformed again.
    """
    token = _KEPT.set({})
    try:
        yield
    finally:
        _KEPT.reset(token)


class WinogradConv2d(nn.Conv2d):
    """An `nn.Conv2d` (same parameters and state dict) that computes with Winograd when `takes_winograd`
    says so (NNPACK's F(6x6, 3x3) on large float32 maps of AVX2 CPUs, F(4x4, 3x3) otherwise), and as a plain
    convolution otherwise."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kept = _KEPT.get()
        if not switch.active() or not takes_winograd(self, x, kept is not None):
            return super().forward(x)
        if takes_nnpack(x):
            return nnpack_conv.conv3x3(x, self.weight, self.bias)
        return winograd_conv3x3(x, self.weight, self.bias, F4X3, transformed_weight=self._kept_transform(kept))

    def _kept_transform(self, kept: dict | None) -> torch.Tensor | None:
        if kept is None:
            return None
        stamp = (self.weight._version, self.weight.data_ptr())
        entry = kept.get(self)
        if entry is None or entry[0] != stamp:
            entry = kept[self] = (stamp, transform_weight(self.weight, F4X3))
        return entry[1]


def install(model: nn.Module) -> int:
    """Switch every eligible convolution in `model` to `WinogradConv2d`; returns how many."""
    count = 0
    for module in model.modules():
        if eligible(module):
            module.__class__ = WinogradConv2d
            count += 1
    return count
