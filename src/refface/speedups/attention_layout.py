"""Keep an autoencoder's mid-block attention from handing a channels-last map to the layers after it.

diffusers' attention returns a 4-D input as a transposed view (channels-last strides); the residual
additions and convolutions after it keep that layout through the rest of the decoder. On a CPU every
direct convolution then copies its weight into channels-last on every call and NNPACK copies its input
back (15-30% more time for those convolutions); on a GPU the layers switch layouts. One copy of the
attention's output costs less.
"""

from __future__ import annotations

import torch
from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0
from torch import nn

from refface.speedups import switch


class ContiguousOutputAttnProcessor(AttnProcessor2_0):
    """diffusers' scaled-dot-product processor with a contiguous (NCHW) output while the speed-ups are on."""

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        out = super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        return out.contiguous() if switch.active() else out


def contiguous_attention_outputs(model: nn.Module) -> int:
    """Give every attention layer of `model` that runs diffusers' plain processor the contiguous one;
    returns how many. Layers with other processors (refface's CacheKV, adapters) are left alone."""
    count = 0
    for module in model.modules():
        if isinstance(module, Attention) and type(module.processor) in (AttnProcessor, AttnProcessor2_0):
            module.set_processor(ContiguousOutputAttnProcessor())
            count += 1
    return count
