"""The starting noise of a restoration, drawn as the official ReF-LDM script draws it."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def item_noise(shape: tuple[int, ...], seeds: Sequence[int]) -> torch.Tensor:
    """One CPU draw of `shape` per item from its own seed (torch.manual_seed(seed); torch.randn(1, *shape)), so
    an image restores the same in any batch."""
    return torch.cat([torch.randn((1, *shape), generator=torch.Generator().manual_seed(int(s))) for s in seeds])
