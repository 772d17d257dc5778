"""The autoencoders' mid-block attention hands the decoder a contiguous map, with the same values."""

from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderKL
from diffusers.models.attention_processor import AttnProcessor2_0

from refface.models.cache_kv import CacheKVAttnProcessor
from refface.speedups.attention_layout import ContiguousOutputAttnProcessor, contiguous_attention_outputs
from tests.conftest import make_tiny_pipeline


def _kl(seed: int) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(16, 32),
        latent_channels=4,
        norm_num_groups=8,
    ).eval()


def _conv_inputs_contiguous(model: torch.nn.Module, run) -> list[bool]:
    seen: list[bool] = []
    hooks = [
        module.register_forward_pre_hook(lambda module, args: seen.append(args[0].is_contiguous()))
        for module in model.modules()
        if isinstance(module, torch.nn.Conv2d)
    ]
    try:
        result = run()
    finally:
        for hook in hooks:
            hook.remove()
    return seen, result


@pytest.mark.parametrize(("batch", "size"), [(2, 16), (3, 24)])
def test_decoder_sees_only_contiguous_maps_and_the_same_values(batch, size):
    vae = _kl(seed=size)
    latents = torch.randn(batch, 4, size // 2, size // 2, generator=torch.Generator().manual_seed(batch))
    with torch.no_grad():
        before, want = _conv_inputs_contiguous(vae.decoder, lambda: vae.decode(latents).sample)
        assert not all(before)  # diffusers' own processor leaves channels-last maps behind it
        assert contiguous_attention_outputs(vae) == 2  # the encoder's and the decoder's mid block
        after, got = _conv_inputs_contiguous(vae.decoder, lambda: vae.decode(latents).sample)
    assert all(after) and len(after) == len(before)
    assert torch.allclose(got, want, atol=1e-5)


def test_other_processors_are_left_alone():
    pipe = make_tiny_pipeline()
    processors = [m.processor for m in pipe.unet.modules() if hasattr(m, "processor")]
    assert processors and all(type(p) is CacheKVAttnProcessor for p in processors)
    assert contiguous_attention_outputs(pipe.unet) == 0
    vq_processors = [type(m.processor) for m in pipe.vqvae.modules() if hasattr(m, "processor")]
    assert vq_processors and set(vq_processors) == {ContiguousOutputAttnProcessor}
    assert ContiguousOutputAttnProcessor.__mro__[1] is AttnProcessor2_0
