"""Where the Composite-Context networks come from: a text-to-image checkpoint, frozen encoders, or tiny random ones.

The paper starts from a Stable-Diffusion-2-class text-to-image LDM (U-Net with cross-attention width
1024, a KL autoencoder); any diffusers folder of that kind works here. Tiny random versions of every
part make the method testable and trainable end to end on a CPU without downloading anything.
"""

from __future__ import annotations

from pathlib import Path

from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPVisionModel

from refface.errors import RefFaceError, short_reason
from refface.models.composite_context import IdentityEncoder
from refface.models.farl import vit_config

TINY_CONTEXT_DIM = 32
PREDICTION_TYPES = ("epsilon", "v_prediction")


def sd_scheduler(**overrides) -> DDIMScheduler:
    """DDIM with Stable Diffusion 2's training schedule (scaled-linear betas 0.00085..0.012, eps prediction)."""
    settings = {
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "clip_sample": False,
        "set_alpha_to_one": False,
        "steps_offset": 1,
        "prediction_type": "epsilon",
        "timestep_spacing": "leading",
    }
    return DDIMScheduler(**{**settings, **overrides})


def tiny_text_to_image(image_size: int = 32) -> tuple[UNet2DConditionModel, AutoencoderKL, DDIMScheduler]:
    """A randomly initialised miniature text-to-image LDM (U-Net, KL autoencoder with 2x downsampling, scheduler)."""
    if image_size < 16 or image_size % 8:
        raise RefFaceError(
            f"The tiny Composite-Context model needs an image size that is a multiple of 8, got {image_size}."
        )
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(16, 32),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=image_size,
    )
    unet = UNet2DConditionModel(
        sample_size=image_size // 2,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TINY_CONTEXT_DIM,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    return unet, vae, sd_scheduler()


def tiny_reference_encoders() -> tuple[IdentityEncoder, CLIPVisionModel]:
    """Random stand-ins for ArcFace (an IResNet with one block per stage) and FaRL (a 2-layer ViT, 17 tokens)."""
    identity = IdentityEncoder(layers=(1, 1, 1, 1)).eval().requires_grad_(False)
    facial = CLIPVisionModel(vit_config(width=64, layers=2, patch=8, image_size=32)).eval().requires_grad_(False)
    return identity, facial


def load_text_to_image(folder: str | Path) -> tuple[UNet2DConditionModel, AutoencoderKL, DDIMScheduler]:
    """The U-Net, autoencoder and schedule of a diffusers text-to-image folder (e.g. a Stable Diffusion 2 download)."""
    root = Path(folder)
    for part in ("unet", "vae", "scheduler"):
        if not root.is_dir() or not any((root / part).glob("*config.json")):
            raise RefFaceError(f"{root} is not a diffusers text-to-image folder: {part}/ with its config is missing.")
    try:
        unet = UNet2DConditionModel.from_pretrained(root, subfolder="unet")
        vae = AutoencoderKL.from_pretrained(root, subfolder="vae")
        config = DDIMScheduler.load_config(root, subfolder="scheduler")
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        reason = short_reason(error)
        raise RefFaceError(f"The text-to-image model in {root} could not be loaded ({reason}).") from None
    if not isinstance(unet.config.cross_attention_dim, int):
        raise RefFaceError(f"The U-Net in {root} has per-block cross-attention widths; one width is needed.")
    if config.get("prediction_type", "epsilon") not in PREDICTION_TYPES:
        raise RefFaceError(
            f"The scheduler in {root} predicts {config['prediction_type']!r}; the Composite-Context method trains "
            f"{' or '.join(PREDICTION_TYPES)} models."
        )
    keep = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "prediction_type", "steps_offset")
    scheduler = sd_scheduler(**{key: config[key] for key in keep if key in config})
    return unet, vae, scheduler
