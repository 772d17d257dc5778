"""Broadcast nearest-neighbour doubling computes diffusers' Upsample2D bit for bit."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.upsampling import Upsample2D

from refface.speedups.upsample import BroadcastUpsample2D, doubled, install
from tests.conftest import make_tiny_pipeline


@pytest.mark.parametrize("shape", [(1, 3, 5, 7), (2, 16, 8, 8), (3, 40, 4, 6)])
def test_doubled_is_nearest_neighbour_interpolation(shape):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(shape[1]))
    assert torch.equal(doubled(x), F.interpolate(x, scale_factor=2.0, mode="nearest"))
    assert doubled(x).is_contiguous()


@pytest.mark.parametrize(("use_conv", "name"), [(True, "conv"), (True, "Conv2d_0"), (False, "conv")])
@pytest.mark.parametrize("batch", [1, 3])
def test_switched_upsampler_equals_diffusers_forward_and_gradients(use_conv, name, batch):
    torch.manual_seed(batch)
    plain = Upsample2D(12, use_conv=use_conv, out_channels=20 if use_conv else None, name=name)
    fast = copy.deepcopy(plain)
    assert install(fast) == 1 and type(fast) is BroadcastUpsample2D
    assert fast.state_dict().keys() == plain.state_dict().keys()
    x = torch.randn(batch, 12, 6, 10, requires_grad=True)
    want = plain(x)
    (want_grad,) = torch.autograd.grad(want.square().sum(), x)
    got = fast(x)
    (got_grad,) = torch.autograd.grad(got.square().sum(), x)
    assert torch.equal(got, want)
    assert torch.allclose(got_grad, want_grad, atol=1e-5)


def test_explicit_output_size_takes_diffusers_path():
    torch.manual_seed(0)
    fast = Upsample2D(4, use_conv=True)
    install(fast)
    x = torch.randn(2, 4, 5, 5)
    out = fast(x, output_size=(11, 9))
    assert out.shape == (2, 4, 11, 9)
    assert torch.equal(out, fast.conv(F.interpolate(x, size=(11, 9), mode="nearest")))


def test_pipelines_switch_their_upsamplers():
    pipe = make_tiny_pipeline()
    kinds = {type(m) for model in (pipe.unet, pipe.vqvae) for m in model.modules() if isinstance(m, Upsample2D)}
    assert kinds == {BroadcastUpsample2D}
