"""CacheKV: self-attention that also attends over the cached keys/values of reference images.

ReF-LDM runs each reference latent through the denoiser once (timestep 0) and keeps the keys and
values of every self-attention layer. In each denoising step a layer then attends over
[own tokens, reference tokens]. The cache lives in explicit objects handed to each call, never in
module state, so one model can serve many threads and a reference cache can be reused for every
LQ photo of the same person.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention


@dataclass(frozen=True)
class ReferenceKV:
    """Keys and values of every self-attention layer for one set of references.

    `keys[layer]` / `values[layer]` have shape [1, heads, tokens, head_dim], the tokens of all
    references laid end to end. `copies` > 1 means the tokens stand for that many identical
    references (the null condition of classifier-free guidance): softmax over k copies of a key
    equals one copy whose logit is raised by log k, so we store one copy and add that bias.
    """

    keys: dict[str, torch.Tensor]
    values: dict[str, torch.Tensor]
    num_references: int
    copies: int = 1

    def repeated(self, copies: int) -> ReferenceKV:
        """The same cache standing for `copies` times as many identical references."""
        return ReferenceKV(self.keys, self.values, self.num_references * copies, self.copies * copies)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> ReferenceKV:
        move = {"device": device, "dtype": dtype}
        return ReferenceKV(
            {name: k.to(**move) for name, k in self.keys.items()},
            {name: v.to(**move) for name, v in self.values.items()},
            self.num_references,
            self.copies,
        )


@dataclass
class KVRecorder:
    """Collects keys/values during a reference pass; `finish()` freezes them into a ReferenceKV."""

    keys: dict[str, torch.Tensor] = field(default_factory=dict)
    values: dict[str, torch.Tensor] = field(default_factory=dict)

    def record(self, layer: str, key: torch.Tensor, value: torch.Tensor) -> None:
        # [refs, heads, tokens, d] -> [1, heads, refs * tokens, d]
        def flatten(t: torch.Tensor) -> torch.Tensor:
            refs, heads, tokens, dim = t.shape
            return t.transpose(0, 1).reshape(1, heads, refs * tokens, dim)

        self.keys[layer] = flatten(key)
        self.values[layer] = flatten(value)

    def finish(self, num_references: int) -> ReferenceKV:
        return ReferenceKV(dict(self.keys), dict(self.values), num_references)


@dataclass(frozen=True)
class ReferenceBatch:
    """Which reference cache each consecutive slice of the denoiser batch attends to.

    For classifier-free guidance over B photos: ((B, null_cache), (B, reference_cache)).
    A slice with `None` attends only to its own tokens.
    """

    segments: tuple[tuple[int, ReferenceKV | None], ...]

    @property
    def batch_size(self) -> int:
        return sum(count for count, _ in self.segments)


CacheKVContext = KVRecorder | ReferenceBatch | None


class CacheKVAttnProcessor:
    """Attention processor for a diffusers `Attention` self-attention layer with CacheKV.

    Stateless apart from the layer name, so one instance per layer serves every thread.
    `context` decides the mode: a KVRecorder records this layer's keys/values (reference pass),
    a ReferenceBatch appends cached reference tokens to the keys/values, None is plain attention.
    """

    def __init__(self, layer: str):
        self.layer = layer

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        context: CacheKVContext = None,
    ) -> torch.Tensor:
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError("CacheKV layers are self-attention layers without masks.")
        residual = hidden_states
        batch, channels, height, width = hidden_states.shape
        normed = attn.group_norm(hidden_states.view(batch, channels, height * width)).transpose(1, 2)

        heads = attn.heads
        head_dim = channels // heads

        def split_heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, -1, heads, head_dim).transpose(1, 2)

        query = split_heads(attn.to_q(normed))
        key = split_heads(attn.to_k(normed))
        value = split_heads(attn.to_v(normed))

        if isinstance(context, KVRecorder):
            context.record(self.layer, key, value)
            out = F.scaled_dot_product_attention(query, key, value)
        elif isinstance(context, ReferenceBatch):
            out = self._attend_with_references(query, key, value, context)
        else:
            out = F.scaled_dot_product_attention(query, key, value)

        out = out.transpose(1, 2).reshape(batch, height * width, channels)
        out = attn.to_out[0](out)
        # contiguous: the transposed view has channels-last strides, which the residual additions would carry
        # through the rest of the U-Net, where every direct convolution then copies its weight on every call
        out = out.transpose(1, 2).reshape(batch, channels, height, width).contiguous()
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor

    def _attend_with_references(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, batch: ReferenceBatch
    ) -> torch.Tensor:
        if batch.batch_size != query.shape[0]:
            raise ValueError(f"ReferenceBatch covers {batch.batch_size} samples but the batch has {query.shape[0]}.")
        outputs = []
        start = 0
        for count, refs in batch.segments:
            q, k, v = (t[start : start + count] for t in (query, key, value))
            start += count
            if refs is None or refs.num_references == 0:
                outputs.append(F.scaled_dot_product_attention(q, k, v))
                continue
            # no-ops unless the cache was made before the model moved to another device or dtype
            ref_k = refs.keys[self.layer].to(q.device, q.dtype).expand(count, -1, -1, -1)
            ref_v = refs.values[self.layer].to(q.device, q.dtype).expand(count, -1, -1, -1)
            k = torch.cat([k, ref_k], dim=2)
            v = torch.cat([v, ref_v], dim=2)
            bias = None
            if refs.copies > 1:
                own, cached = q.shape[2], ref_k.shape[2]
                bias = torch.zeros(1, own + cached, dtype=q.dtype, device=q.device)
                bias[:, own:] = math.log(refs.copies)
            outputs.append(F.scaled_dot_product_attention(q, k, v, attn_mask=bias))
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=0)
