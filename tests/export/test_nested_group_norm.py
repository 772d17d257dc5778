"""NestedGroupNorm: the same function as nn.GroupNorm, written with short reductions for the VQ graphs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from refface import speedups
from refface.export.graphs import NestedGroupNorm, with_nested_group_norms
from refface.models.vq import decode_quantized, encode_unquantized
from tests.conftest import make_tiny_pipeline


@pytest.mark.parametrize("shape", [(2, 64, 12, 20), (3, 64, 50), (1, 64, 1, 7)])
@pytest.mark.parametrize("affine", [True, False])
def test_same_function_as_group_norm(shape, affine):
    torch.manual_seed(0)
    norm = nn.GroupNorm(16, 64, eps=1e-6, affine=affine)
    if affine:
        nn.init.normal_(norm.weight)
        nn.init.normal_(norm.bias)
    x = torch.randn(shape) * 3 + 2
    with torch.no_grad():
        assert (NestedGroupNorm(norm)(x) - norm(x)).abs().max() < 1e-5


def test_copy_swaps_every_group_norm_and_leaves_the_model_alone():
    vq = make_tiny_pipeline().vqvae
    nested = with_nested_group_norms(vq)
    assert not any(isinstance(m, nn.GroupNorm) for m in nested.modules())
    assert (
        sum(isinstance(m, NestedGroupNorm) for m in nested.modules())
        == sum(isinstance(m, nn.GroupNorm) for m in vq.modules())
        > 0
    )
    assert not any(isinstance(m, NestedGroupNorm) for m in vq.modules())
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    with speedups.disabled(), torch.no_grad():
        latents = encode_unquantized(vq, images)
        assert (encode_unquantized(nested, images) - latents).abs().max() < 1e-5
        assert (decode_quantized(nested, latents) - decode_quantized(vq, latents)).abs().max() < 1e-5
