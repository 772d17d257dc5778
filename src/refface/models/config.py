"""ReF-LDM architecture description, read from an official config YAML or the released sizes.

The official code instantiates classes from strings in its YAML; we only read the numbers we need
and build diffusers modules from them, so a config can never execute code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from refface.errors import RefFaceError, short_reason


@dataclass(frozen=True)
class UNetArchitecture:
    """The openaimodel UNetModel numbers that determine the denoiser's shape."""

    image_size: int = 64
    in_channels: int = 16
    out_channels: int = 8
    model_channels: int = 160
    channel_mult: tuple[int, ...] = (1, 2, 2, 4)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (2, 4, 8)
    num_head_channels: int = 32

    def attention_levels(self) -> list[bool]:
        """Whether each resolution level has self-attention (downsampling factor in the list)."""
        return [2**level in self.attention_resolutions for level in range(len(self.channel_mult))]


@dataclass(frozen=True)
class VQArchitecture:
    """The taming-transformers VQGAN numbers (ddconfig, embed_dim, n_embed)."""

    resolution: int = 512
    in_channels: int = 3
    out_ch: int = 3
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 4)
    num_res_blocks: int = 2
    z_channels: int = 8
    embed_dim: int = 8
    n_embed: int = 8192
    mid_attention: bool = True  # latent-diffusion's ddconfig attn_type: vanilla (True) or none (False)

    @property
    def downsampling_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


@dataclass(frozen=True)
class RefLDMArchitecture:
    """Everything needed to build the ReF-LDM networks and noise schedule."""

    unet: UNetArchitecture = field(default_factory=UNetArchitecture)
    vq: VQArchitecture = field(default_factory=VQArchitecture)
    num_train_timesteps: int = 1000
    linear_start: float = 0.0015
    linear_end: float = 0.0155

    @property
    def image_size(self) -> int:
        """Working resolution in pixels: the latent size times the VQ downsampling factor."""
        return self.unet.image_size * self.vq.downsampling_factor

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def released_architecture() -> RefLDMArchitecture:
    """The sizes of the released `refldm.ckpt` / `vqgan.ckpt` (configs/refldm.yaml of release 1.0.0)."""
    return RefLDMArchitecture()


def _get(mapping: Any, path: str, source: Path) -> Any:
    node = mapping
    for key in path.split("."):
        if not isinstance(node, dict) or key not in node:
            raise RefFaceError(f"The config {source} has no '{path}' entry; is it an official ReF-LDM config?")
        node = node[key]
    return node


def _ints(value: Any, path: str, source: Path) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(isinstance(v, int) for v in value):
        raise RefFaceError(f"The config {source} entry '{path}' must be a list of integers, got {value!r}.")
    return tuple(value)


def load_official_config(path: str | Path) -> RefLDMArchitecture:
    """Read the architecture from an official-format config YAML (as shipped with ReF-LDM)."""
    source = Path(path)
    try:
        document = yaml.safe_load(source.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RefFaceError(f"The config file {source} does not exist.") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        reason = short_reason(error)
        raise RefFaceError(f"The config file {source} is not readable YAML ({reason}).") from None

    params = _get(document, "model.params", source)
    unet = _get(params, "unet_config.params", source)
    first_stage = _get(params, "first_stage_config.params", source)
    dd = _get(first_stage, "ddconfig", source)

    if unet.get("use_spatial_transformer", False):
        raise RefFaceError(f"The config {source} uses a spatial transformer U-Net, which ReF-LDM does not.")
    head_channels = unet.get("num_head_channels", -1)
    if not isinstance(head_channels, int) or head_channels <= 0:
        raise RefFaceError(f"The config {source} must set a positive 'num_head_channels' (a fixed head width).")
    if unet.get("use_scale_shift_norm", False):
        raise RefFaceError(f"The config {source} sets use_scale_shift_norm, which the ReF-LDM U-Net does not use.")
    if dd.get("attn_resolutions"):
        raise RefFaceError(f"The config {source} puts attention inside VQGAN levels, which ReF-LDM's VQGAN does not.")
    if dd.get("double_z", False):
        raise RefFaceError(f"The config {source} describes a KL autoencoder (double_z), not ReF-LDM's VQGAN.")

    attn_type = dd.get("attn_type", "vanilla")
    if attn_type not in ("vanilla", "none"):
        raise RefFaceError(
            f"The config {source} sets ddconfig.attn_type {attn_type!r}; refface builds vanilla or none."
        )

    def number(node: dict, key: str, where: str) -> int:
        value = _get(node, key, source)
        if not isinstance(value, int) or value <= 0:
            raise RefFaceError(f"The config {source} entry '{where}.{key}' must be a positive integer.")
        return value

    unet_arch = UNetArchitecture(
        image_size=number(unet, "image_size", "unet_config.params"),
        in_channels=number(unet, "in_channels", "unet_config.params"),
        out_channels=number(unet, "out_channels", "unet_config.params"),
        model_channels=number(unet, "model_channels", "unet_config.params"),
        channel_mult=_ints(_get(unet, "channel_mult", source), "channel_mult", source),
        num_res_blocks=number(unet, "num_res_blocks", "unet_config.params"),
        attention_resolutions=_ints(_get(unet, "attention_resolutions", source), "attention_resolutions", source),
        num_head_channels=head_channels,
    )
    vq_arch = VQArchitecture(
        resolution=number(dd, "resolution", "ddconfig"),
        in_channels=number(dd, "in_channels", "ddconfig"),
        out_ch=number(dd, "out_ch", "ddconfig"),
        ch=number(dd, "ch", "ddconfig"),
        ch_mult=_ints(_get(dd, "ch_mult", source), "ch_mult", source),
        num_res_blocks=number(dd, "num_res_blocks", "ddconfig"),
        z_channels=number(dd, "z_channels", "ddconfig"),
        embed_dim=number(first_stage, "embed_dim", "first_stage_config.params"),
        n_embed=number(first_stage, "n_embed", "first_stage_config.params"),
        mid_attention=attn_type == "vanilla",
    )
    if unet_arch.in_channels != 2 * vq_arch.embed_dim or unet_arch.out_channels != vq_arch.embed_dim:
        raise RefFaceError(
            f"The config {source} is inconsistent: the U-Net must take 2 x {vq_arch.embed_dim} channels "
            f"(noisy + LQ latent) and return {vq_arch.embed_dim}."
        )
    return RefLDMArchitecture(
        unet=unet_arch,
        vq=vq_arch,
        num_train_timesteps=params.get("timesteps", 1000),
        linear_start=float(params.get("linear_start", 0.0015)),
        linear_end=float(params.get("linear_end", 0.0155)),
    )


def tiny_architecture(image_size: int = 16) -> RefLDMArchitecture:
    """A few-hundred-kilobyte ReF-LDM for tests, smoke runs and demos on a CPU.

    The latent stays 8x8x4 at every size; larger images get more VQ downsampling levels.
    """
    factor = image_size // 8
    if image_size < 16 or image_size % 8 or factor & (factor - 1):
        raise RefFaceError(f"The tiny architecture needs an image size of 16, 32, 64, ... pixels, got {image_size}.")
    levels = factor.bit_length()  # 16 px -> (1, 2), 32 px -> (1, 2, 2), ...
    return RefLDMArchitecture(
        unet=UNetArchitecture(
            image_size=8,
            in_channels=8,
            out_channels=4,
            model_channels=32,
            channel_mult=(1, 2),
            num_res_blocks=1,
            attention_resolutions=(2,),
            num_head_channels=16,
        ),
        vq=VQArchitecture(
            resolution=image_size,
            ch=32,
            ch_mult=(1,) + (2,) * (levels - 1),
            num_res_blocks=1,
            z_channels=4,
            embed_dim=4,
            n_embed=16,
        ),
    )
