"""Checkpoints of Real-ESRGAN's released layouts with random weights: the background models' tests and benchmark
load them through spandrel exactly as they would load the released files."""

from __future__ import annotations

import torch


def _conv(generator: torch.Generator, out: int, inp: int, scale: float = 0.05) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(out, inp, 3, 3, generator=generator) * scale, torch.randn(out, generator=generator) * 0.01


def compact_checkpoint(path, num_conv: int = 32, upscale: int = 4, seed: int = 0):
    """realesr-general-x4v3's layout (SRVGGNetCompact: conv, PReLU, ..., conv to 3 x upscale^2, pixel shuffle),
    saved as the release does (under "params"), with random weights."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    channels = 3
    for index in range(num_conv + 1):
        state[f"body.{2 * index}.weight"], state[f"body.{2 * index}.bias"] = _conv(generator, 64, channels)
        state[f"body.{2 * index + 1}.weight"] = torch.full((64,), 0.25)
        channels = 64
    last = 2 * (num_conv + 1)
    state[f"body.{last}.weight"], state[f"body.{last}.bias"] = _conv(generator, 3 * upscale * upscale, 64)
    torch.save({"params": state}, path)
    return path


def rrdb_checkpoint(path, scale: int = 4, blocks: int = 2, seed: int = 0):
    """RealESRGAN_x4plus / x2plus's layout (basicsr's RRDBNet, x2 reading a pixel-unshuffled input), saved as the
    release does (under "params_ema"), with random weights and fewer blocks."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    state["conv_first.weight"], state["conv_first.bias"] = _conv(generator, 64, 3 * (4 if scale == 2 else 1))
    for block in range(blocks):
        for rdb in (1, 2, 3):
            for conv in range(1, 6):
                out = 64 if conv == 5 else 32
                key = f"body.{block}.rdb{rdb}.conv{conv}"
                state[f"{key}.weight"], state[f"{key}.bias"] = _conv(generator, out, 64 + 32 * (conv - 1), 0.02)
    for name in ("conv_body", "conv_up1", "conv_up2", "conv_hr"):
        state[f"{name}.weight"], state[f"{name}.bias"] = _conv(generator, 64, 64)
    state["conv_last.weight"], state["conv_last.bias"] = _conv(generator, 3, 64)
    torch.save({"params_ema": state}, path)
    return path
