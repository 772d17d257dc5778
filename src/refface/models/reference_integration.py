"""How a denoiser sees reference latents: CacheKV (ReF-LDM) and the paper's ablation alternatives.

Every way of integrating references is a `ReferenceDenoiser` (`refface.models.reference_denoiser`,
importable from here too): an `nn.Module` that owns the U-Net (and any extra layers the integration
needs), so one `forward` call covers the reference encoding and the noise prediction. That matters for
distributed training, where DDP only synchronises gradients of computations run through the wrapped
module's `forward`. This module holds CacheKV and the registry of all integrations (`denoiser_class`).

Sampling splits the call in two: `encode_references` once per set of references, then `predict`
at every denoising step with that context.
"""

from __future__ import annotations

import torch

from refface.errors import RefFaceError
from refface.models.cache_kv import ReferenceBatch, ReferenceKV
from refface.models.config import UNetArchitecture
from refface.models.reference_ablations import ABLATIONS
from refface.models.reference_denoiser import ReferenceDenoiser
from refface.models.unet import build_unet, denoise, reference_pass

INTEGRATIONS = ("cachekv", "channel-concat", "cross-attention", "spatial-concat")


class CacheKVDenoiser(ReferenceDenoiser):
    """ReF-LDM: each reference goes through the U-Net once at t = 0; every self-attention layer then
    attends over [own tokens, all reference tokens of the same item]. Works with any number of references."""

    name = "cachekv"

    @classmethod
    def build(cls, arch: UNetArchitecture, num_refs: int) -> CacheKVDenoiser:
        return cls(build_unet(arch), num_refs)

    def encode_references(self, refs: torch.Tensor) -> ReferenceBatch | None:
        self.check_references(refs)
        batch, count = refs.shape[:2]
        if count == 0:
            return None
        caches = split_reference_kv(reference_pass(self.unet, refs.flatten(0, 1)), batch)
        return ReferenceBatch(tuple((1, cache) for cache in caches))

    def predict(
        self, noisy: torch.Tensor, lq: torch.Tensor, context: ReferenceBatch | None, timesteps: torch.Tensor
    ) -> torch.Tensor:
        return denoise(self.unet, torch.cat([noisy, lq], dim=1), timesteps, context)


def split_reference_kv(cache: ReferenceKV, batch: int) -> list[ReferenceKV]:
    """Cut a reference pass over B items x N references into one cache per item (tokens are item-major)."""
    per_item = cache.num_references // batch
    caches = []
    for item in range(batch):

        def part(tensor: torch.Tensor, item: int = item) -> torch.Tensor:
            tokens = tensor.shape[2] // batch
            return tensor[:, :, item * tokens : (item + 1) * tokens]

        caches.append(
            ReferenceKV(
                {name: part(k) for name, k in cache.keys.items()},
                {name: part(v) for name, v in cache.values.items()},
                per_item,
            )
        )
    return caches


def denoiser_class(name: str) -> type[ReferenceDenoiser]:
    """The ReferenceDenoiser for an integration name (see INTEGRATIONS)."""
    if name == "cachekv":
        return CacheKVDenoiser
    if name in INTEGRATIONS:
        return ABLATIONS[name]
    raise RefFaceError(f"Unknown reference integration {name!r}; choose one of {', '.join(INTEGRATIONS)}.")


def build_denoiser(name: str, arch: UNetArchitecture, num_refs: int) -> ReferenceDenoiser:
    return denoiser_class(name).build(arch, num_refs)
