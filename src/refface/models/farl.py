"""FaRL ViT-B/16, the Composite-Context method's facial-appearance encoder, as a transformers CLIP vision tower.

FaRL (Zheng et al., CVPR 2022) is a CLIP ViT-B/16 pre-trained on LAION-Face; its release is an OpenAI-CLIP
state dict (`{"state_dict": {"visual.conv1.weight", ...}}`, loaded upstream into `clip.load("ViT-B/16")`).
Here those weights are renamed onto transformers' `CLIPVisionModel` (the maintained implementation of
the same network: pre-LayerNorm, QuickGELU, fused in-projection split into q/k/v), so the encoder saves
and loads with diffusers pipelines like any other component. The method uses all 197 output tokens.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import CLIPVisionConfig, CLIPVisionModel

from refface.errors import RefFaceError
from refface.weights import WeightFile, ensure_weights

# CLIP's input normalisation, which FaRL kept.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HEAD_WIDTH = 64  # OpenAI CLIP's ViTs use 64 channels per attention head

# The FaRL authors' GitHub release. They publish no checksum, so the file is verified by its structure
# when loaded (every tensor of a ViT-B/16 visual tower present with its shape) instead of by SHA-256.
FARL_WEIGHTS = WeightFile(
    "FaRL-Base-Patch16-LAIONFace20M-ep64.pth",
    "https://github.com/FacePerceiver/FaRL/releases/download/pretrained_weights/FaRL-Base-Patch16-LAIONFace20M-ep64.pth",
    None,
    "the FaRL authors' terms (Microsoft; see the FaRL repository); pre-trained on LAION-Face",
)


def vit_config(
    width: int = 768, layers: int = 12, patch: int = 16, image_size: int = 224, mlp_ratio: int = 4
) -> CLIPVisionConfig:
    """An OpenAI-style CLIP vision tower (ViT-B/16 by default): QuickGELU, LayerNorm eps 1e-5."""
    return CLIPVisionConfig(
        hidden_size=width,
        intermediate_size=width * mlp_ratio,
        num_hidden_layers=layers,
        num_attention_heads=max(1, width // HEAD_WIDTH),
        image_size=image_size,
        patch_size=patch,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
    )


def _visual_weights(state: Mapping[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """The visual tower's tensors without their prefix (`visual.`, `module.visual.` or none)."""
    for prefix in ("visual.", "module.visual.", "model.visual.", ""):
        found = {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}
        if "conv1.weight" in found and "positional_embedding" in found:
            return found
    raise RefFaceError(f"{source} is not a FaRL / OpenAI-CLIP visual checkpoint (no visual.conv1.weight).")


def config_from_openai(visual: Mapping[str, torch.Tensor], source: str) -> CLIPVisionConfig:
    """The tower's size read from the tensors themselves (width, depth, patch, input size)."""
    width, _, patch, _ = visual["conv1.weight"].shape
    layers = len({key.split(".")[2] for key in visual if key.startswith("transformer.resblocks.")})
    grid = math.isqrt(visual["positional_embedding"].shape[0] - 1)
    if layers == 0 or grid * grid + 1 != visual["positional_embedding"].shape[0]:
        raise RefFaceError(f"{source} does not hold a complete ViT visual tower (no blocks or a non-square grid).")
    mlp = visual["transformer.resblocks.0.mlp.c_fc.weight"].shape[0] // width
    return vit_config(width, layers, patch, grid * patch, mlp)


def convert_openai_visual(visual: Mapping[str, torch.Tensor], layers: int) -> dict[str, torch.Tensor]:
    """OpenAI-CLIP visual names -> transformers CLIPVisionModel names (the fused q/k/v projection split in three)."""
    converted = {
        "embeddings.class_embedding": visual["class_embedding"],
        "embeddings.patch_embedding.weight": visual["conv1.weight"],
        "embeddings.position_embedding.weight": visual["positional_embedding"],
        "pre_layrnorm.weight": visual["ln_pre.weight"],
        "pre_layrnorm.bias": visual["ln_pre.bias"],
        "post_layernorm.weight": visual["ln_post.weight"],
        "post_layernorm.bias": visual["ln_post.bias"],
    }
    pairs = {
        "attn.out_proj": "self_attn.out_proj",
        "ln_1": "layer_norm1",
        "ln_2": "layer_norm2",
        "mlp.c_fc": "mlp.fc1",
        "mlp.c_proj": "mlp.fc2",
    }
    for index in range(layers):
        old, new = f"transformer.resblocks.{index}.", f"encoder.layers.{index}."
        for name in ("weight", "bias"):
            q, k, v = visual[f"{old}attn.in_proj_{name}"].chunk(3)
            converted.update({f"{new}self_attn.{p}_proj.{name}": t for p, t in zip("qkv", (q, k, v), strict=True)})
            for before, after in pairs.items():
                converted[f"{new}{after}.{name}"] = visual[f"{old}{before}.{name}"]
    return converted


def farl_from_state(state: Mapping[str, torch.Tensor], source: str = "the FaRL weights") -> CLIPVisionModel:
    """A frozen CLIPVisionModel holding the visual tower of a FaRL (or OpenAI CLIP) state dict."""
    visual = _visual_weights(state, source)
    config = config_from_openai(visual, source)
    try:
        weights = convert_openai_visual(visual, config.num_hidden_layers)
    except KeyError as error:
        raise RefFaceError(f"{source} misses the tensor visual.{error.args[0]}; the file is incomplete.") from None
    model = CLIPVisionModel(config)
    target = model.state_dict()
    wrong = [key for key, value in weights.items() if key in target and target[key].shape != value.shape]
    missing = [key for key in target if key not in weights]
    if wrong or missing:
        problem = f"{wrong[0]} has the wrong shape" if wrong else f"{missing[0]} is missing"
        raise RefFaceError(f"{source} does not fit a CLIP ViT ({problem}).")
    model.load_state_dict({key: value.float() for key, value in weights.items() if key in target})
    return model.eval().requires_grad_(False)


def load_farl(path: str | Path) -> CLIPVisionModel:
    """FaRL from its released `.pth` (or any OpenAI-CLIP checkpoint with a visual tower)."""
    from refface.models.checkpoints import read_state_dict

    return farl_from_state(read_state_dict(path, "FaRL weights"), str(path))


def default_farl() -> CLIPVisionModel:
    """The released FaRL-Base-Patch16-LAIONFace20M-ep64, downloaded into the refface cache on first use."""
    return load_farl(ensure_weights(FARL_WEIGHTS))


def farl_pixels(images: torch.Tensor, size: int) -> torch.Tensor:
    """[-1, 1] RGB faces -> the CLIP-normalised `size` x `size` input FaRL expects (bicubic, antialiased)."""
    pixels = (images.float() + 1.0) / 2.0
    if pixels.shape[-2:] != (size, size):
        pixels = F.interpolate(pixels, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    mean = torch.tensor(CLIP_MEAN, device=pixels.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=pixels.device).view(1, 3, 1, 1)
    return (pixels - mean) / std
