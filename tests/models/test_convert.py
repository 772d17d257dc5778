"""Official checkpoint layout -> diffusers modules."""

from __future__ import annotations

import json
import math

import pytest
import torch

from refface import RefFaceError, released_architecture
from refface.models.checkpoints import read_state_dict, select_unet_weights, select_vq_weights
from refface.models.config import UNetArchitecture
from refface.models.convert import _legacy_qkv_part, apply_rules, unet_rules, vq_rules
from refface.models.unet import build_unet
from refface.models.vq import build_vqmodel


def _legacy_attention(x, norm, qkv_w, qkv_b, proj_w, proj_b, heads):
    """The openaimodel AttentionBlock + QKVAttentionLegacy, written from its description."""
    b, c, h, w = x.shape
    flat = norm(x).reshape(b, c, h * w)
    qkv = torch.nn.functional.conv1d(flat, qkv_w, qkv_b)  # [b, 3c, T], laid out [head][q,k,v][d]
    q, k, v = qkv.reshape(b * heads, 3 * (c // heads), h * w).split(c // heads, dim=1)
    scale = 1 / math.sqrt(math.sqrt(c // heads))
    weight = torch.softmax(torch.einsum("bct,bcs->bts", q * scale, k * scale).float(), dim=-1)
    out = torch.einsum("bts,bcs->bct", weight, v).reshape(b, c, h * w)
    return x + torch.nn.functional.conv1d(out, proj_w, proj_b).reshape(b, c, h, w)


@pytest.mark.parametrize(("channels", "head_channels"), [(32, 16), (64, 16), (96, 32)])
def test_legacy_qkv_split_matches_official_attention(channels, head_channels):
    arch = UNetArchitecture(
        image_size=8,
        in_channels=8,
        out_channels=4,
        model_channels=channels,
        channel_mult=(1,),
        num_res_blocks=1,
        attention_resolutions=(1,),
        num_head_channels=head_channels,
    )
    unet = build_unet(arch)
    attn = unet.down_blocks[0].attentions[0]
    heads = channels // head_channels
    g = torch.Generator().manual_seed(channels)
    qkv_w, qkv_b = torch.randn(3 * channels, channels, 1, generator=g) * 0.2, torch.randn(3 * channels, generator=g)
    proj_w, proj_b = torch.randn(channels, channels, 1, generator=g) * 0.2, torch.randn(channels, generator=g)
    with torch.no_grad():
        for part, layer in enumerate((attn.to_q, attn.to_k, attn.to_v)):
            layer.weight.copy_(_legacy_qkv_part(heads, part)(qkv_w))
            layer.bias.copy_(_legacy_qkv_part(heads, part)(qkv_b))
        attn.to_out[0].weight.copy_(proj_w[..., 0])
        attn.to_out[0].bias.copy_(proj_b)
        x = torch.randn(2, channels, 6, 5, generator=g)
        want = _legacy_attention(x, attn.group_norm, qkv_w, qkv_b, proj_w, proj_b, heads)
        got = attn.processor(attn, x)
    # a wrong head or q/k/v order gives O(1) errors; rounding at |x| ~ 10 is ~1e-5
    assert torch.allclose(got, want, atol=1e-4)


def test_released_key_layout_maps_onto_our_modules(slim):
    """Every key and shape of the released full-size checkpoints has a place in our modules."""
    keys = json.loads((slim.parent / "official-full-keys.json").read_text())
    arch = released_architecture()
    unet_shapes = {k[len("model.diffusion_model.") :]: v for k, v in keys["refldm.ckpt"].items()}
    vq_shapes = {k: v for k, v in keys["vqgan.ckpt[state_dict]"].items() if not k.startswith("loss.")}
    with torch.device("meta"):
        unet, vq = build_unet(arch.unet), build_vqmodel(arch.vq)
    for shapes, rules, module in ((unet_shapes, unet_rules(arch.unet), unet), (vq_shapes, vq_rules(arch.vq), vq)):
        official = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
        converted = apply_rules(official, rules, "released")
        ours = module.state_dict()
        assert converted.keys() == ours.keys()
        assert all(converted[k].shape == ours[k].shape for k in ours)
    assert sum(math.prod(s) for s in unet_shapes.values()) == sum(p.numel() for p in unet.parameters())


def test_key_mismatch_is_one_sentence_naming_the_keys(slim):
    state = read_state_dict(slim / "refldm.ckpt", "checkpoint")
    weights = select_unet_weights(state, "refldm.ckpt")
    from refface import load_official_config

    arch = load_official_config(slim / "config.yaml")
    del weights["out.2.bias"]
    weights["extra.weight"] = torch.zeros(1)
    with pytest.raises(RefFaceError) as error:
        apply_rules(weights, unet_rules(arch.unet), "refldm.ckpt")
    message = str(error.value)
    assert "out.2.bias" in message and "extra.weight" in message and "\n" not in message


def test_ema_weights_are_preferred_and_partial_ema_is_refused(slim):
    state = read_state_dict(slim / "refldm.ckpt", "checkpoint")
    ema = select_unet_weights(state, "x")
    raw = select_unet_weights(state, "x", prefer_ema=False)
    assert torch.equal(raw["out.2.weight"], state["model.diffusion_model.out.2.weight"])
    assert torch.equal(ema["out.2.weight"], state["model_ema.diffusion_modelout2weight"])
    assert not torch.equal(ema["out.2.weight"], raw["out.2.weight"])
    del state["model_ema.diffusion_modelout2weight"]
    with pytest.raises(RefFaceError, match="EMA weights for only part"):
        select_unet_weights(state, "x")


def test_vq_weights_ignore_training_keys_and_follow_official_override(slim):
    vq_state = read_state_dict(slim / "vqgan.ckpt", "vqgan")
    assert any(k.startswith("loss.") for k in vq_state)
    refldm = {"first_stage_model.quant_conv.bias": torch.full((8,), 7.0)}
    merged = select_vq_weights(vq_state, refldm, "x")
    assert not any(k.startswith("loss.") for k in merged)
    assert torch.equal(merged["quant_conv.bias"], torch.full((8,), 7.0))
    with pytest.raises(RefFaceError, match="--vqgan"):
        select_vq_weights(None, {}, "refldm.ckpt")


class _Payload:
    """An arbitrary class: weights_only loading must refuse to build it."""


def test_unsafe_and_broken_checkpoints_fail_clearly(tmp_path):
    pickled = tmp_path / "code.ckpt"
    torch.save({"obj": _Payload()}, pickled)
    with pytest.raises(RefFaceError, match="_Payload.*could run code"):
        read_state_dict(pickled, "ReF-LDM checkpoint")
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"\x00not a checkpoint" * 100)
    with pytest.raises(RefFaceError, match="not a readable PyTorch checkpoint"):
        read_state_dict(garbage, "ReF-LDM checkpoint")
    truncated = tmp_path / "truncated.ckpt"
    torch.save({"w": torch.randn(1000)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:500])
    with pytest.raises(RefFaceError, match="truncated.ckpt"):
        read_state_dict(truncated, "ReF-LDM checkpoint")
    with pytest.raises(RefFaceError, match="does not exist"):
        read_state_dict(tmp_path / "missing.ckpt", "ReF-LDM checkpoint")
    with pytest.raises(RefFaceError, match="no denoiser weights"):
        select_unet_weights({"encoder.conv_in.weight": torch.zeros(1)}, "vqgan.ckpt")
