"""The memory-lean VQGAN walk computes what the plain modules compute, in every mode it can take."""

from __future__ import annotations

import pytest
import torch

from refface import speedups
from refface.models.config import VQArchitecture
from refface.models.vq import build_vqmodel, decode_quantized, encode_unquantized, nearest_codes
from refface.speedups import lean_vq
from refface.speedups.lean_vq import GroupStats, LeanDecoder, LeanEncoder, LeanPlan, lean_decode, lean_encode
from tests.conftest import restore_official_case

PLANS = {
    "one strip, stored": LeanPlan(strip_bytes=2**30, store_limit=2**30),
    "4-row strips, stored": LeanPlan(strip_bytes=1, store_limit=2**30),
    "5-row strips, recomputed": LeanPlan(strip_bytes=32 * 5 * 48 * 4, store_limit=0),
    "4-row strips, recomputed": LeanPlan(strip_bytes=1, store_limit=0),
}


def _vq(seed: int):
    torch.manual_seed(seed)
    arch = VQArchitecture(
        resolution=32, in_channels=3, out_ch=3, ch=32, ch_mult=(1, 2, 2), num_res_blocks=2, z_channels=4,
        embed_dim=4, n_embed=32, mid_attention=True,
    )  # fmt: skip
    model = build_vqmodel(arch).eval().requires_grad_(False)
    with torch.no_grad():  # non-trivial norm affines and biases, so folding them in is exercised
        for module in model.modules():
            if isinstance(module, torch.nn.GroupNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
    return model


def _close(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.shape == want.shape
    assert (got - want).abs().max() <= 2e-5 * max(1.0, want.abs().max().item())


@pytest.mark.parametrize(
    ("dtype", "tolerance"), [(torch.float32, 1e-6), (torch.float64, 1e-12), (torch.bfloat16, 1e-6)]
)
# one strip in 3 passes of squared deviations; uneven small strips; 2 passes, then a short strip
@pytest.mark.parametrize(("shape", "strip_rows"), [((2, 64, 40, 520), 40), ((3, 96, 9, 12), 4), ((1, 32, 70, 300), 64)])
def test_group_statistics_over_strips_match_float64(shape, strip_rows, dtype, tolerance):
    """Strips of uneven height, strips larger than one pass over their deviations, a mean far from zero."""
    values = torch.randn(shape, generator=torch.Generator().manual_seed(shape[1])) * 3 + 5
    values = values.to(dtype)
    stats = GroupStats(shape[0], 32, values.device)
    for start in range(0, shape[2], strip_rows):
        stats.add(values[:, :, start : start + strip_rows])
    variance, mean = torch.var_mean(values.double().view(shape[0], 32, -1), dim=2, correction=0)
    assert stats.count == values[0, 0].numel() * shape[1] // 32
    assert (stats.mean - mean).abs().max() <= tolerance * 10
    assert ((stats.squares / stats.count - variance) / variance).abs().max() <= tolerance


@pytest.mark.parametrize("plan", PLANS.values(), ids=PLANS.keys())
@pytest.mark.parametrize(("batch", "height", "width"), [(1, 16, 16), (2, 24, 16), (1, 16, 48), (3, 40, 24)])
def test_lean_encode_equals_the_encoder(plan, batch, height, width):
    vq = _vq(seed=height + width)
    images = torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(batch)) * 2 - 1
    kept = images.clone()
    with torch.no_grad():
        want = vq.quant_conv(vq.encoder(images))
        got = vq.quant_conv(lean_encode(vq.encoder, images, plan))
    _close(got, want)
    assert torch.equal(images, kept)  # written in place only into its own activations


@pytest.mark.parametrize("plan", PLANS.values(), ids=PLANS.keys())
@pytest.mark.parametrize(("batch", "height", "width"), [(1, 4, 4), (2, 6, 4), (1, 4, 12)])
def test_lean_decode_equals_the_decoder(plan, batch, height, width):
    vq = _vq(seed=3 * height + width)
    latents = torch.randn(batch, 4, height, width, generator=torch.Generator().manual_seed(height))
    with torch.no_grad():
        codes = nearest_codes(vq, latents)
        want = vq.decoder(vq.post_quant_conv(codes))
        got = lean_decode(vq.decoder, vq.post_quant_conv(codes), plan)
    _close(got, want)


@pytest.mark.parametrize(
    "plan", [PLANS["4-row strips, stored"], PLANS["4-row strips, recomputed"]], ids=["stored", "recomputed"]
)
def test_lean_walk_divides_by_a_residual_scale_other_than_one(plan):
    vq = _vq(seed=11)
    for module in vq.modules():
        if hasattr(module, "output_scale_factor"):
            module.output_scale_factor = 2.0
    latents = torch.randn(2, 4, 6, 4, generator=torch.Generator().manual_seed(11))
    images = torch.rand(2, 3, 24, 16, generator=torch.Generator().manual_seed(12)) * 2 - 1
    with torch.no_grad():
        codes = nearest_codes(vq, latents)
        _close(lean_decode(vq.decoder, vq.post_quant_conv(codes), plan), vq.decoder(vq.post_quant_conv(codes)))
        _close(lean_encode(vq.encoder, images, plan), vq.encoder(images))


def test_large_inputs_take_the_lean_walk_and_training_does_not(monkeypatch):
    vq = _vq(seed=1)
    assert lean_vq.install(vq) == 2
    assert type(vq.encoder) is LeanEncoder and type(vq.decoder) is LeanDecoder
    calls = []
    for name in ("lean_encode", "lean_decode"):
        original = getattr(lean_vq, name)
        monkeypatch.setattr(lean_vq, name, lambda *a, _f=original, _n=name, **k: calls.append(_n) or _f(*a, **k))
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        encode_unquantized(vq, images)
        assert calls == []  # small: plain modules
        lean_vq.install(vq, above_bytes=0)
        latents = encode_unquantized(vq, images)
        decode_quantized(vq, latents)
        assert calls == ["lean_encode", "lean_decode"]
        with speedups.disabled():  # the switch: plain modules
            decode_quantized(vq, encode_unquantized(vq, images))
    assert calls == ["lean_encode", "lean_decode"]
    encode_unquantized(vq.requires_grad_(True), images).sum().backward()  # gradients: plain modules
    assert calls == ["lean_encode", "lean_decode"]


def test_only_cpu_inputs_take_the_lean_walk():
    """On a GPU the strips' many small launches cost more than the memory they save: plain modules there."""
    vq = _vq(seed=1)
    channels = vq.config.block_out_channels[0]
    with torch.no_grad():
        for dtype in (torch.float32, torch.bfloat16):
            assert lean_vq.takes_lean_walk(channels, 5, 512, 512, torch.empty(0, dtype=dtype))
            assert not lean_vq.takes_lean_walk(channels, 5, 512, 512, torch.empty(0, dtype=dtype, device="meta"))
        assert not lean_vq.takes_lean_walk(channels, 1, 32, 32, torch.empty(0))  # small: plain modules on a CPU too


def test_only_vqgans_get_the_lean_walk():
    from refface.models.composite_parts import tiny_text_to_image

    _, vae, _ = tiny_text_to_image(32)
    assert lean_vq.install(vae) == 0 and type(vae.encoder).__name__ == "Encoder"


def test_official_case_through_the_lean_walk(slim_pipeline, slim_case):
    """The exact-mode fixture, with every VQGAN call forced through small recomputed strips."""
    inputs, expected = slim_case["inputs"], slim_case["expected"]
    vq = slim_pipeline.vqvae
    lean_vq.install(vq, plan=LeanPlan(strip_bytes=1, store_limit=0), above_bytes=0)
    try:
        wide = torch.cat(list(inputs["refs"]), dim=-1)[None]
        assert (encode_unquantized(vq, wide) - expected["ref_latent"]).abs().max() < 1e-4
        out = restore_official_case(slim_pipeline, slim_case)
    finally:
        lean_vq.install(vq, plan=LeanPlan(), above_bytes=lean_vq.LEAN_ABOVE_BYTES)  # the session's pipeline
    assert (out.latents - expected["latent"]).abs().max() < 1e-4
    assert (out.pixels - expected["image"]).abs().max() < 1e-4
