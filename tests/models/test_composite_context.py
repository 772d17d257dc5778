"""The Composite-Context tokens: layout, positional encoding, dropping by mask, and the widened U-Net input."""

from __future__ import annotations

import math

import pytest
import torch

from refface.errors import RefFaceError
from refface.models.composite_context import (
    CompositeContext,
    CompositeDenoiser,
    ReferenceFeatures,
    sinusoidal_positions,
    widen_input,
)
from refface.models.composite_parts import TINY_CONTEXT_DIM, tiny_text_to_image

TOKENS = 5


def _features(count: int, seed: int, tokens: int = TOKENS) -> ReferenceFeatures:
    generator = torch.Generator().manual_seed(seed)
    return ReferenceFeatures(
        torch.randn(count, 12, generator=generator), torch.randn(count, tokens, 20, generator=generator)
    )


@pytest.fixture(scope="module")
def parts():
    torch.manual_seed(0)
    unet, _, _ = tiny_text_to_image(32)
    widen_input(unet, 4)
    context = CompositeContext(identity_dim=12, facial_dim=20, facial_tokens=TOKENS, context_dim=TINY_CONTEXT_DIM)
    with torch.no_grad():  # a trained-looking null token, not the zero it starts at
        context.null_token.normal_()
    return unet.eval(), context.eval()


def test_positions_are_the_transformer_sinusoids():
    table = sinusoidal_positions(7, 10)
    for position, channel in [(0, 0), (3, 4), (6, 9), (5, 1)]:
        frequency = 10000 ** (-(channel - channel % 2) / 10)
        expected = math.sin(position * frequency) if channel % 2 == 0 else math.cos(position * frequency)
        assert table[position, channel].item() == pytest.approx(expected, abs=1e-6)
    assert len({tuple(row.tolist()) for row in table}) == 7


def test_context_layout_is_null_identity_then_facial_tokens(parts):
    _, context = parts
    features = _features(3, seed=1)
    tokens, mask = context(features)
    assert tokens.shape == (3, 2 + TOKENS, TINY_CONTEXT_DIM) and mask.all()
    with torch.no_grad():
        identity = context.identity_proj(features.identity) + context.positions[1]
        facial = context.facial_proj(features.facial) + context.positions[2:]
        null = context.null_token[0, 0] + context.positions[0]
    torch.testing.assert_close(tokens[:, 1], identity)
    torch.testing.assert_close(tokens[:, 2:], facial)
    torch.testing.assert_close(tokens[:, 0], null.expand(3, -1))
    with pytest.raises(RefFaceError, match="expects 5"):
        context(_features(1, seed=2, tokens=4))


def test_masking_a_component_equals_removing_its_tokens(parts):
    unet, context = parts
    features = _features(4, seed=3)
    keep_identity = torch.tensor([True, False, True, False])
    keep_facial = torch.tensor([True, True, False, False])
    generator = torch.Generator().manual_seed(4)
    sample = torch.randn(4, 8, 16, 16, generator=generator)
    timesteps = torch.tensor([10, 500, 999, 250])
    with torch.no_grad():
        tokens, mask = context(features, keep_identity, keep_facial)
        masked = unet(sample, timesteps, encoder_hidden_states=tokens, encoder_attention_mask=mask).sample
        full, _ = context(features)
        for item in range(4):
            kept = (
                [0] + ([1] if keep_identity[item] else []) + (list(range(2, 2 + TOKENS)) if keep_facial[item] else [])
            )
            removed = unet(
                sample[item : item + 1], timesteps[item : item + 1], encoder_hidden_states=full[item : item + 1, kept]
            ).sample
            torch.testing.assert_close(masked[item : item + 1], removed, rtol=1e-4, atol=1e-5)


def test_a_dropped_context_says_nothing_about_its_reference(parts):
    unet, context = parts
    denoiser = CompositeDenoiser(unet, context)
    generator = torch.Generator().manual_seed(5)
    noisy, lq = torch.randn(2, 4, 16, 16, generator=generator), torch.randn(2, 4, 16, 16, generator=generator)
    off = torch.zeros(2, dtype=torch.bool)
    with torch.no_grad():
        a = denoiser(noisy, lq, _features(2, seed=6), torch.tensor([3, 700]), keep_identity=off, keep_facial=off)
        b = denoiser(noisy, lq, _features(2, seed=7), torch.tensor([3, 700]), keep_identity=off, keep_facial=off)
        c = denoiser(noisy, lq, _features(2, seed=7), torch.tensor([3, 700]))
        no_lq = denoiser(noisy, lq, _features(2, seed=7), torch.tensor([3, 700]), keep_lq=off)
        zero_lq = denoiser(noisy, torch.zeros_like(lq), _features(2, seed=7), torch.tensor([3, 700]))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (b - c).abs().max() > 1e-4  # the references do matter when they are kept
    torch.testing.assert_close(no_lq, zero_lq, rtol=0, atol=0)


def test_widened_unet_starts_as_the_text_to_image_unet():
    torch.manual_seed(1)
    original, _, _ = tiny_text_to_image(32)
    with torch.no_grad():
        original.conv_in.bias.normal_()
    widened, _, _ = tiny_text_to_image(32)
    widened.load_state_dict(original.state_dict())
    widen_input(widened, 4)
    assert widened.config.in_channels == 8 and widened.conv_in.weight.shape[1] == 8
    generator = torch.Generator().manual_seed(2)
    latent, lq = torch.randn(3, 4, 16, 16, generator=generator), torch.randn(3, 4, 16, 16, generator=generator)
    context = torch.randn(3, 6, TINY_CONTEXT_DIM, generator=generator)
    with torch.no_grad():
        expected = original(latent, torch.tensor([1, 400, 900]), encoder_hidden_states=context).sample
        got = widened(torch.cat([latent, lq], 1), torch.tensor([1, 400, 900]), encoder_hidden_states=context).sample
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_the_unet_and_the_context_must_agree_on_width():
    unet, _, _ = tiny_text_to_image(32)
    with pytest.raises(RefFaceError, match="cross-attention width"):
        CompositeDenoiser(unet, CompositeContext(context_dim=TINY_CONTEXT_DIM * 2, facial_tokens=3))
