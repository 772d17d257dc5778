"""The U-Net walk that CacheKV needs computes what diffusers' own UNet2DModel.forward computes."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DModel

from refface.models.config import UNetArchitecture
from refface.models.unet import build_unet, denoise, denoise_copies

ARCHITECTURES = {
    "attention at 1/2": UNetArchitecture(
        image_size=8, in_channels=8, out_channels=4, model_channels=32, channel_mult=(1, 2),
        num_res_blocks=1, attention_resolutions=(2,), num_head_channels=16,
    ),
    "three levels, two blocks": UNetArchitecture(
        image_size=16, in_channels=6, out_channels=3, model_channels=32, channel_mult=(1, 2, 2),
        num_res_blocks=2, attention_resolutions=(2, 4), num_head_channels=8,
    ),
}  # fmt: skip


def _pair(arch: UNetArchitecture, seed: int) -> tuple[UNet2DModel, UNet2DModel]:
    """A CacheKV U-Net with random weights (non-zero everywhere) and diffusers' plain model with the same weights."""
    torch.manual_seed(seed)
    unet = build_unet(arch).eval()
    with torch.no_grad():
        for parameter in unet.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)  # zero-initialised output layers get weights too
    plain = UNet2DModel.from_config(unet.config).eval()
    plain.load_state_dict(unet.state_dict())
    return unet, plain


@pytest.mark.parametrize("name", ARCHITECTURES)
@pytest.mark.parametrize(("batch", "size"), [(2, 8), (3, 16), (2, 12)])
def test_denoise_without_references_equals_unet_forward(name, batch, size):
    arch = ARCHITECTURES[name]
    unet, plain = _pair(arch, seed=batch * size)
    generator = torch.Generator().manual_seed(size)
    sample = torch.randn(batch, arch.in_channels, size, size, generator=generator)
    timesteps = torch.randint(0, 1000, (batch,), generator=generator)
    with torch.no_grad():
        got = denoise(unet, sample, timesteps)
        want = plain(sample, timesteps).sample
    assert got.shape == (batch, arch.out_channels, size, size) and want.abs().mean() > 1e-3
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    with torch.no_grad():  # a scalar timestep is every item's
        torch.testing.assert_close(
            denoise(unet, sample, timesteps[0]), plain(sample, timesteps[0]).sample, atol=1e-5, rtol=0
        )


@pytest.mark.parametrize("copies", [2, 3])
def test_denoise_copies_without_references_equals_the_repeated_batch(copies):
    arch = ARCHITECTURES["three levels, two blocks"]
    unet, plain = _pair(arch, seed=copies)
    sample = torch.randn(2, arch.in_channels, 8, 8, generator=torch.Generator().manual_seed(copies))
    t = torch.tensor([10, 900])
    with torch.no_grad():
        got = denoise_copies(unet, sample, t, None, copies)
        want = plain(torch.cat([sample] * copies), t.repeat(copies)).sample
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_denoise_gradients_match_unet_forward():
    arch = ARCHITECTURES["attention at 1/2"]
    unet, plain = _pair(arch, seed=5)
    sample = torch.randn(2, arch.in_channels, 8, 8, generator=torch.Generator().manual_seed(5))
    t = torch.tensor([3, 500])
    denoise(unet, sample, t).square().mean().backward()
    plain(sample, t).sample.square().mean().backward()
    for (name, ours), theirs in zip(unet.named_parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_denoise_refuses_a_recorder():
    from refface.models.cache_kv import KVRecorder

    unet, _ = _pair(ARCHITECTURES["attention at 1/2"], seed=1)
    with pytest.raises(ValueError, match="reference_pass"):
        denoise(unet, torch.randn(1, 8, 8, 8), torch.tensor(0), KVRecorder())
