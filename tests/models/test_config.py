"""Official config YAML parsing."""

from __future__ import annotations

import pytest

from refface import RefFaceError, load_official_config, released_architecture


def test_slim_config_is_read(slim):
    arch = load_official_config(slim / "config.yaml")
    assert arch.unet.model_channels == 32 and arch.unet.channel_mult == (1, 1, 1, 2)
    assert arch.unet.attention_levels() == [False, True, True, True]
    assert arch.vq.n_embed == 64 and arch.image_size == 128


def test_released_defaults_match_the_paper():
    arch = released_architecture()
    assert arch.image_size == 512
    assert arch.unet.attention_levels() == [False, True, True, True]  # 32x32, 16x16, 8x8
    assert (arch.vq.ch, arch.vq.ch_mult, arch.vq.n_embed) == (128, (1, 1, 2, 4), 8192)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("model: [unclosed", "not readable YAML"),
        ("model:\n  params: {}\n", "unet_config"),
        ("just a string", "model"),
    ],
)
def test_bad_configs_fail_with_one_sentence(tmp_path, text, needle):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(RefFaceError, match=needle) as error:
        load_official_config(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_config_with_inconsistent_channels_is_refused(slim, tmp_path):
    text = (slim / "config.yaml").read_text().replace("in_channels: 16", "in_channels: 12")
    path = tmp_path / "inconsistent.yaml"
    path.write_text(text)
    with pytest.raises(RefFaceError, match="inconsistent"):
        load_official_config(path)
    with pytest.raises(RefFaceError, match="does not exist"):
        load_official_config(tmp_path / "missing.yaml")


def test_vqgan_attention_type_follows_latent_diffusion(slim, tmp_path):
    """ddconfig.attn_type none builds the VQGAN without its mid-block attention; unknown types are refused."""
    from refface.models.vq import build_vqmodel

    text = (slim / "config.yaml").read_text()
    with_attention = load_official_config(slim / "config.yaml").vq
    path = tmp_path / "none.yaml"
    path.write_text(text.replace("ddconfig:\n", "ddconfig:\n          attn_type: none\n", 1))
    without = load_official_config(path).vq
    assert with_attention.mid_attention and not without.mid_attention
    keys = {name for name, _ in build_vqmodel(without).named_parameters()}
    assert not any(".attentions." in key for key in keys)
    assert any(".attentions." in name for name, _ in build_vqmodel(with_attention).named_parameters())
    path.write_text(text.replace("ddconfig:\n", "ddconfig:\n          attn_type: linear\n", 1))
    with pytest.raises(RefFaceError, match="attn_type 'linear'"):
        load_official_config(path)
