"""FaRL's OpenAI-CLIP weights on transformers' CLIPVisionModel: same numbers as the original network."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from refface.errors import RefFaceError
from refface.models.farl import CLIP_MEAN, CLIP_STD, farl_from_state, farl_pixels, load_farl


def openai_visual_state(width: int, layers: int, patch: int, grid: int, seed: int) -> dict[str, torch.Tensor]:
    """A random state dict laid out as OpenAI CLIP's VisionTransformer (`visual.*` keys, fused in-projection)."""
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape: int, scale: float = 0.1) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * scale

    state = {
        "visual.class_embedding": rand(width),
        "visual.positional_embedding": rand(grid * grid + 1, width),
        "visual.proj": rand(width, 16),
        "visual.conv1.weight": rand(width, 3, patch, patch),
        "visual.ln_pre.weight": 1 + rand(width),
        "visual.ln_pre.bias": rand(width),
        "visual.ln_post.weight": 1 + rand(width),
        "visual.ln_post.bias": rand(width),
        "logit_scale": torch.tensor(4.6),  # text-side keys are ignored
    }
    for index in range(layers):
        block = f"visual.transformer.resblocks.{index}."
        state.update(
            {
                block + "attn.in_proj_weight": rand(3 * width, width),
                block + "attn.in_proj_bias": rand(3 * width),
                block + "attn.out_proj.weight": rand(width, width),
                block + "attn.out_proj.bias": rand(width),
                block + "ln_1.weight": 1 + rand(width),
                block + "ln_1.bias": rand(width),
                block + "ln_2.weight": 1 + rand(width),
                block + "ln_2.bias": rand(width),
                block + "mlp.c_fc.weight": rand(4 * width, width),
                block + "mlp.c_fc.bias": rand(4 * width),
                block + "mlp.c_proj.weight": rand(width, 4 * width),
                block + "mlp.c_proj.bias": rand(width),
            }
        )
    return state


def openai_visual_tokens(state: dict[str, torch.Tensor], images: torch.Tensor, heads: int) -> torch.Tensor:
    """The original network's token outputs (before ln_post), written from CLIP's definition."""
    v = {key.removeprefix("visual."): value for key, value in state.items()}
    width = v["class_embedding"].shape[0]
    x = F.conv2d(images, v["conv1.weight"], stride=v["conv1.weight"].shape[-1])
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([v["class_embedding"].expand(x.shape[0], 1, width), x], dim=1) + v["positional_embedding"]
    x = F.layer_norm(x, (width,), v["ln_pre.weight"], v["ln_pre.bias"], 1e-5)
    layers = len({key.split(".")[2] for key in v if key.startswith("transformer.resblocks.")})
    for index in range(layers):
        b = {key.removeprefix(f"transformer.resblocks.{index}."): t for key, t in v.items()}
        h = F.layer_norm(x, (width,), b["ln_1.weight"], b["ln_1.bias"], 1e-5)
        q, k, value = F.linear(h, b["attn.in_proj_weight"], b["attn.in_proj_bias"]).chunk(3, dim=-1)
        split = [t.view(t.shape[0], t.shape[1], heads, -1).transpose(1, 2) for t in (q, k, value)]
        weights = torch.softmax(split[0] @ split[1].transpose(-1, -2) / math.sqrt(width // heads), dim=-1)
        attended = (weights @ split[2]).transpose(1, 2).reshape(x.shape)
        x = x + F.linear(attended, b["attn.out_proj.weight"], b["attn.out_proj.bias"])
        h = F.layer_norm(x, (width,), b["ln_2.weight"], b["ln_2.bias"], 1e-5)
        h = F.linear(h, b["mlp.c_fc.weight"], b["mlp.c_fc.bias"])
        h = h * torch.sigmoid(1.702 * h)  # QuickGELU
        x = x + F.linear(h, b["mlp.c_proj.weight"], b["mlp.c_proj.bias"])
    return x


@pytest.mark.parametrize(("width", "layers", "patch", "grid"), [(64, 2, 8, 4), (128, 3, 4, 5)])
def test_converted_weights_give_the_original_tokens(width, layers, patch, grid):
    state = openai_visual_state(width, layers, patch, grid, seed=width)
    model = farl_from_state(state)
    assert model.config.num_attention_heads == width // 64
    assert model.config.image_size == patch * grid
    images = torch.randn(3, 3, patch * grid, patch * grid, generator=torch.Generator().manual_seed(1))
    expected = openai_visual_tokens(state, images, width // 64)
    with torch.no_grad():
        tokens = model(pixel_values=images).last_hidden_state
    assert tokens.shape == (3, grid * grid + 1, width)
    torch.testing.assert_close(tokens, expected, rtol=1e-4, atol=1e-4)
    assert not any(p.requires_grad for p in model.parameters())


def test_checkpoint_files_load_with_any_prefix_and_bad_ones_are_one_sentence(tmp_path):
    state = openai_visual_state(64, 1, 8, 2, seed=3)
    bare = {key.removeprefix("visual."): value for key, value in state.items()}
    torch.save({"state_dict": {f"module.visual.{k}": v for k, v in bare.items()}}, tmp_path / "wrapped.pth")
    torch.save(bare, tmp_path / "bare.pth")
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        outputs = [
            load_farl(tmp_path / name)(pixel_values=images).last_hidden_state for name in ("wrapped.pth", "bare.pth")
        ]
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=0)

    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    del bare["transformer.resblocks.0.mlp.c_fc.bias"]
    torch.save(bare, tmp_path / "partial.pth")
    torch.save({"text.weight": torch.zeros(2)}, tmp_path / "text.pth")
    cases = {
        "missing.pth": "does not exist",
        "junk.pth": "not a readable PyTorch checkpoint",
        "partial.pth": "misses the tensor visual.transformer.resblocks.0.mlp.c_fc.bias",
        "text.pth": "not a FaRL / OpenAI-CLIP visual checkpoint",
    }
    for name, message in cases.items():
        with pytest.raises(RefFaceError, match=message) as caught:
            load_farl(tmp_path / name)
        assert name in str(caught.value) and "\n" not in str(caught.value)


def test_pixels_are_resized_and_clip_normalised():
    images = torch.rand(2, 3, 48, 48) * 2 - 1
    pixels = farl_pixels(images, 32)
    assert pixels.shape == (2, 3, 32, 32)
    flat = torch.full((1, 3, 8, 8), 0.5)  # 0.5 in [-1, 1] is 0.75 in [0, 1]
    expected = (0.75 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    torch.testing.assert_close(farl_pixels(flat, 8)[0, :, 3, 3], expected)
