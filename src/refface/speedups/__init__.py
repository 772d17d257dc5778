"""Every CPU speed-up of refface in one place, over one switch.

Each speed-up is a module computing the same function as the diffusers module it stands in for (same
parameters and state dict; only the rounding differs), and takes its fast path only for inference on a CPU:
- `winograd`: 3x3 convolutions by Winograd F(4x4, 3x3), or NNPACK's F(6x6, 3x3) on AVX2 CPUs (`nnpack_conv`);
  `kept_transformed_weights` keeps the transformed weights for a sampling loop;
- `lean_vq`: a memory-lean walk of the VQGAN's encoder and decoder for large images;
- `upsample`: nearest-neighbour doubling as one broadcast copy;
- `attention_layout`: contiguous outputs from the autoencoders' attention layers.

`install(*models)` gives models those modules (the pipelines do it for inference; pipelines built for training
get none unless asked). Whether installed modules take their fast paths is decided per call by one switch
scoped to the current thread or task: `with refface.speedups.disabled(): ...` runs the plain computations
there while a restoration in another thread keeps its speed-ups.
"""

from __future__ import annotations

from torch import nn

from refface.speedups import attention_layout, lean_vq, upsample, winograd
from refface.speedups.switch import active, allowed, disabled, enabled
from refface.speedups.winograd import kept_transformed_weights


def install(*models: nn.Module) -> None:
    """Give the models every faster module that computes the same function (parameters and state dicts stay)."""
    for model in models:
        winograd.install(model)
        upsample.install(model)
        attention_layout.contiguous_attention_outputs(model)
        lean_vq.install(model)


__all__ = ["active", "allowed", "disabled", "enabled", "install", "kept_transformed_weights"]
