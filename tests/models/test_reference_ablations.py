"""The paper's reference-integration ablations: shapes, per-item independence, null conditions, training."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers.models.attention_processor import Attention

from refface import tiny_architecture
from refface.errors import RefFaceError
from refface.models.reference_ablations import (
    ABLATIONS,
    ChannelConcatDenoiser,
    CrossAttentionDenoiser,
    ReferenceCrossAttnProcessor,
    SpatialConcatDenoiser,
)
from refface.models.reference_integration import ReferenceDenoiser, build_denoiser, denoiser_class
from refface.models.unet import build_unet, denoise

ARCH = tiny_architecture().unet
C, SIZE = ARCH.out_channels, ARCH.image_size
CLASSES = [ChannelConcatDenoiser, CrossAttentionDenoiser, SpatialConcatDenoiser]


def _build(cls: type[ReferenceDenoiser], num_refs: int, seed: int = 0) -> ReferenceDenoiser:
    torch.manual_seed(seed)
    return cls.build(ARCH, num_refs).eval()


def _inputs(batch: int, num_refs: int, seed: int = 1) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    noisy = torch.randn(batch, C, SIZE, SIZE, generator=g)
    lq = torch.randn(batch, C, SIZE, SIZE, generator=g)
    refs = torch.randn(batch, num_refs, C, SIZE, SIZE, generator=g)
    timesteps = torch.randint(0, 1000, (batch,), generator=g)
    return noisy, lq, refs, timesteps


def _plain_unet(denoiser: ReferenceDenoiser):
    """A CacheKV U-Net with the denoiser's U-Net weights, without any ablation-specific layers."""
    unet = build_unet(ARCH)
    weights = {k: v for k, v in denoiser.unet.state_dict().items() if ".processor." not in k}
    unet.load_state_dict(weights)
    return unet.eval()


def test_registry_names_every_ablation():
    assert set(ABLATIONS) == {"channel-concat", "cross-attention", "spatial-concat"}
    for cls in CLASSES:
        assert denoiser_class(cls.name) is cls
        assert ABLATIONS[cls.name] is cls
    assert isinstance(build_denoiser("spatial-concat", ARCH, 2), SpatialConcatDenoiser)


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("num_refs", [1, 3])
@torch.no_grad()
def test_shape_independence_and_reference_use(cls, num_refs):
    model = _build(cls, num_refs)
    noisy, lq, refs, t = _inputs(3, num_refs)
    out = model(noisy, lq, refs, t)
    assert out.shape == noisy.shape

    # item 1's references affect item 1 only
    changed = refs.clone()
    changed[1] = torch.randn_like(changed[1])
    other = model(noisy, lq, changed, t)
    assert torch.allclose(other[0], out[0], atol=1e-5)
    assert torch.allclose(other[2], out[2], atol=1e-5)
    assert (other[1] - out[1]).abs().max() > 1e-6  # references are not ignored

    # encode once, predict per step: the same as forward
    assert torch.allclose(model.predict(noisy, lq, model.encode_references(refs), t), out, atol=1e-6)


def test_channel_concat_has_fixed_reference_count():
    model = _build(ChannelConcatDenoiser, 2)
    assert model.unet.conv_in.in_channels == ARCH.in_channels + 2 * C
    noisy, lq, refs, t = _inputs(2, 3)
    with pytest.raises(RefFaceError, match=r"2 references but got 3"):
        model(noisy, lq, refs, t)
    with torch.no_grad():
        none = model(noisy, lq, refs[:, :0], t)
        zeros = model(noisy, lq, torch.zeros_like(refs[:, :2]), t)
    assert torch.equal(none, zeros)  # no references is the zero null condition


@pytest.mark.parametrize("cls", [SpatialConcatDenoiser, CrossAttentionDenoiser])
@torch.no_grad()
def test_no_references_is_the_plain_unet(cls):
    model = _build(cls, 0)
    noisy, lq, refs, t = _inputs(2, 0)
    got = model(noisy, lq, refs, t)
    want = denoise(_plain_unet(model), torch.cat([noisy, lq], dim=1), t, None)
    assert torch.allclose(got, want, atol=1e-6)


@torch.no_grad()
def test_cross_attention_processor_is_decoupled_attention():
    """to_out(self-attention + attention over projected reference tokens) + residual, written out."""
    torch.manual_seed(5)
    channels, heads, tokens = 32, 2, 10
    attn = Attention(channels, heads=heads, dim_head=16, norm_num_groups=8, residual_connection=True, bias=True)
    attn.set_processor(ReferenceCrossAttnProcessor("layer", C, channels))
    assert "processor.to_k_ref.weight" in attn.state_dict()
    x, context = torch.randn(2, channels, 3, 3), torch.randn(2, tokens, C)

    def heads_of(t: torch.Tensor) -> torch.Tensor:
        return t.view(2, t.shape[1], heads, 16).transpose(1, 2)

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(16), dim=-1)
        return (weights @ v).transpose(1, 2).reshape(2, -1, channels)

    normed = attn.group_norm(x.view(2, channels, 9)).transpose(1, 2)
    q, k, v = (heads_of(f(normed)) for f in (attn.to_q, attn.to_k, attn.to_v))
    proc = attn.processor
    mixed = attend(q, k, v) + attend(q, heads_of(proc.to_k_ref(context)), heads_of(proc.to_v_ref(context)))
    want = attn.to_out[0](mixed).transpose(1, 2).reshape(x.shape) + x
    assert torch.allclose(attn.processor(attn, x, context=context), want, atol=1e-5)
    plain = attn.to_out[0](attend(q, k, v)).transpose(1, 2).reshape(x.shape) + x
    assert torch.allclose(attn.processor(attn, x, context=None), plain, atol=1e-5)


@torch.no_grad()
def test_cross_attention_treats_references_as_a_set():
    model = _build(CrossAttentionDenoiser, 3)
    for module in model.modules():  # larger reference values so the check is not trivially satisfied
        if isinstance(module, ReferenceCrossAttnProcessor):
            module.to_v_ref.weight.mul_(50)
    noisy, lq, refs, t = _inputs(2, 3)
    out = model(noisy, lq, refs, t)
    assert torch.allclose(model(noisy, lq, refs[:, [2, 0, 1]], t), out, atol=1e-5)
    assert (model(noisy, lq, refs.flip(-1), t) - out).abs().max() > 1e-3  # positions matter


@pytest.mark.parametrize("cls", CLASSES)
def test_gradients_reach_every_parameter(cls):
    model = _build(cls, 2).train()
    noisy, lq, refs, t = _inputs(2, 2)
    model(noisy, lq, refs, t).square().mean().backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None]
    assert not missing
    if cls is ChannelConcatDenoiser:
        assert model.unet.conv_in.weight.grad[:, ARCH.in_channels :].abs().sum() > 0
    if cls is CrossAttentionDenoiser:
        processors = [m for m in model.modules() if isinstance(m, ReferenceCrossAttnProcessor)]
        assert processors
        for processor in processors:
            for p in (*processor.to_k_ref.parameters(), *processor.to_v_ref.parameters()):
                assert p.grad.abs().sum() > 0
        assert model.ref_position.grad.abs().sum() > 0


@pytest.mark.parametrize("cls", CLASSES)
@torch.no_grad()
def test_state_dict_round_trip(cls):
    model = _build(cls, 2, seed=3)
    fresh = _build(cls, 2, seed=4)
    if cls is CrossAttentionDenoiser:
        assert any(".processor.to_k_ref." in key for key in model.state_dict())
    fresh.load_state_dict(model.state_dict())
    noisy, lq, refs, t = _inputs(2, 2)
    assert torch.equal(fresh(noisy, lq, refs, t), model(noisy, lq, refs, t))


@pytest.mark.parametrize("cls", CLASSES)
def test_bad_references_are_refface_errors(cls):
    model = _build(cls, 1)
    noisy, lq, refs, t = _inputs(2, 1)
    with pytest.raises(RefFaceError):
        model(noisy, lq, refs[:, :, :2], t)  # wrong channel count
    with pytest.raises(RefFaceError):
        model(noisy, lq, refs[0], t)  # missing reference axis
    if cls is not CrossAttentionDenoiser:  # cross-attention accepts references of another size
        with pytest.raises(RefFaceError):
            model(noisy, lq, refs[..., :4, :4], t)
