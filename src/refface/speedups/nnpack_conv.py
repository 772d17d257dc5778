"""3x3 convolutions through NNPACK's Winograd F(6x6, 3x3) kernels, in strips of rows that bound its memory.

PyTorch ships NNPACK but routes a convolution to it only for batches of 16 or more. For one large
feature map its fused transforms (one pass over the input and one over the output, where refface's
own F(4x4, 3x3) in `refface.speedups.winograd` needs several tensor passes) make the VQGAN's 3x3
convolutions 1.3-1.8x faster than that (measured per convolution, 512 x 512 down to 64 x 64 maps).
It computes the same function as the direct convolution; its float32 rounding is of the order of
refface's F(4x4, 3x3) (measured 6-11e-5 against float64 on unit-scale outputs, the direct
convolution 1.5-2.6e-5).

NNPACK keeps a per-thread workspace as large as the largest call's transformed input and output
(470 MB for one 128-channel 512 x 512 map), and never gives it back. So a large map is computed in
strips of whole 6-row output tiles, which bounds the workspace to `io_bytes` plus the transformed
kernel and gives the same numbers as one call (the tiles are the same). Each image of a batch is
one call, as PyTorch's own batch path is a slow training-time algorithm.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

OUTPUT_TILE = 6  # F(6x6, 3x3): 6 x 6 outputs from 8 x 8 inputs
TILE_POINTS = 64
IO_BYTES = 64 * 2**20  # transformed input + output of one call: the part of the workspace that grows with the map


def available() -> bool:
    """Whether this PyTorch build has NNPACK and it initialised on this CPU (x86-64 needs AVX2 and FMA3)."""
    probe = getattr(torch, "_nnpack_available", None)
    return probe is not None and bool(probe())


def preferred() -> bool:
    """Whether refface should route large float32 maps here: NNPACK is available and PyTorch's own kernels
    on this CPU are no wider than NNPACK's AVX2 ones.

    On an AVX2 CPU NNPACK beat refface's F(4x4, 3x3) by 1.3-1.8x on the VQGAN's maps; on an AVX-512 CPU
    (where MKL's matrix products, and so F(4x4, 3x3), use the wider vectors) it lost on every map of the
    released models, by 1.1-1.6x (`takes_nnpack` in `refface.speedups.winograd` then sends those maps to
    F(4x4, 3x3)).
    """
    return available() and torch.backends.cpu.get_cpu_capability() != "AVX512"


def strip_rows(channels: int, out_channels: int, width: int, io_bytes: int = IO_BYTES) -> int:
    """Output rows per NNPACK call: whole tiles whose transformed input and output fit in `io_bytes`."""
    tile_row_bytes = 4 * TILE_POINTS * (channels + out_channels) * -(-width // OUTPUT_TILE)
    return OUTPUT_TILE * max(1, io_bytes // tile_row_bytes)


def conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, io_bytes: int = IO_BYTES) -> torch.Tensor:
    """`F.conv2d(x, weight, bias, padding=1)` for float32 [B, C, H, W] on CPU, through NNPACK.

    Call `available()` first: NNPACK must be initialised, which that probe does.
    """
    batch, channels, height, width = x.shape
    weight = weight.contiguous()
    rows = strip_rows(channels, weight.shape[0], width, io_bytes)
    if rows >= height:
        images = [
            torch._nnpack_spatial_convolution(x[i : i + 1].contiguous(), weight, bias, [1, 1]) for i in range(batch)
        ]
        return images[0] if batch == 1 else torch.cat(images)
    out = x.new_empty(batch, weight.shape[0], height, width)
    for i in range(batch):
        for first in range(0, height, rows):
            last = min(first + rows, height)
            top, bottom = first - 1, last + 1  # one halo row on each side, zeros outside the map
            strip = x[i : i + 1, :, max(top, 0) : min(bottom, height)]
            if top < 0 or bottom > height:
                strip = F.pad(strip, (0, 0, max(-top, 0), max(bottom - height, 0)))
            out[i : i + 1, :, first:last] = torch._nnpack_spatial_convolution(strip.contiguous(), weight, bias, [0, 1])
    return out
