"""The official names of the U-Net's attention layers, which ONNX hosts bind, derived from refface's U-Net."""

from __future__ import annotations

import json

import torch

from refface import released_architecture
from refface.export.names import attention_layers
from refface.models.convert import unet_rules
from refface.models.unet import build_unet
from tests.conftest import FIXTURES, make_tiny_pipeline

# The layers a face-swap host binds on the released model (`<name with _>_k_ext` / `_v_ext`).
RELEASED = [
    *(f"input_blocks.{i}.1.attention" for i in (4, 5, 7, 8, 10, 11)),
    "middle_block.1.attention",
    *(f"output_blocks.{i}.1.attention" for i in range(9)),
]


def _released_unet():
    with torch.device("meta"):
        return build_unet(released_architecture().unet)


def test_released_layers_have_the_official_names_heads_and_tokens():
    layers = attention_layers(_released_unet())
    assert [layer.official_name for layer in layers] == RELEASED
    assert layers[0].key_name == "input_blocks_4_1_attention_k_ext"
    assert layers[-1].value_name == "output_blocks_8_1_attention_v_ext"
    # 32 channels per head; 320 channels at 32x32 and 16x16, 640 at 8x8
    assert [(layer.heads, layer.head_dim, layer.tokens) for layer in layers] == (
        [(10, 32, 1024)] * 2 + [(10, 32, 256)] * 2 + [(20, 32, 64)] * 6 + [(10, 32, 256)] * 3 + [(10, 32, 1024)] * 3
    )


def test_names_agree_with_the_checkpoint_converter_and_the_released_keys():
    arch = released_architecture().unet
    layers = attention_layers(_released_unet())
    official_of = {
        dst.removesuffix(".to_q.weight"): src.removesuffix(".qkv.weight")
        for src, dst, _ in unet_rules(arch)
        if dst.endswith(".to_q.weight")
    }
    assert {layer.diffusers_name: layer.official_name.removesuffix(".attention") for layer in layers} == official_of
    keys = json.loads((FIXTURES / "official-full-keys.json").read_text())["refldm.ckpt"]
    for layer in layers:
        shape = keys[f"model.diffusion_model.{layer.official_name.removesuffix('.attention')}.qkv.weight"]
        assert shape[0] == 3 * layer.heads * layer.head_dim


def test_tiny_layers_follow_its_own_layout():
    unet = make_tiny_pipeline().unet
    layers = attention_layers(unet)
    names = {name for name, module in unet.named_modules() if type(module).__name__ == "Attention"}
    assert {layer.diffusers_name for layer in layers} == names
    assert [layer.official_name for layer in layers] == [
        "input_blocks.3.1.attention",
        "middle_block.1.attention",
        "output_blocks.0.1.attention",
        "output_blocks.1.1.attention",
    ]
    assert {layer.tokens for layer in layers} == {16}  # the 8x8 latent halved once
