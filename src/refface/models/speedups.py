"""One call that gives a pipeline's models the faster modules computing the same functions."""

from __future__ import annotations

from torch import nn

from refface.models import attention_layout, upsample, winograd


def install_speedups(*models: nn.Module) -> None:
    """Winograd 3x3 convolutions, broadcast nearest-neighbour upsampling (both on a CPU), and contiguous
    outputs from diffusers' plain attention layers. Parameters and state dicts stay as they are."""
    for model in models:
        winograd.install(model)
        upsample.install(model)
        attention_layout.contiguous_attention_outputs(model)
