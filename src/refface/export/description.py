"""`refface_onnx.json`: everything a host needs besides the graphs to restore a face with them.

Every graph's input and output names, element types and shapes are read back from the written files (so the
description cannot drift from the graphs), with the attention layers' official names, heads, head width and
tokens per reference, and the sampling constants: the noise schedule (betas and the float64 cumulative
product refface uses), DDIM's rules, the timestep spacings, guidance and strength.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from refface.export.host_flags import HOST_FLAGS
from refface.export.names import attention_layers
from refface.files import write_text_atomically
from refface.pipelines.refldm import RefLDMPipeline

DESCRIPTION_FILE = "refface_onnx.json"
FORMAT = "refface-onnx"
FORMAT_VERSION = 1

_ELEMENT_TYPES = {1: "float32", 7: "int64", 9: "bool", 10: "float16", 11: "float64", 16: "bfloat16"}


def _value_info(value: Any) -> dict[str, Any]:
    tensor = value.type.tensor_type
    shape = [dim.dim_param if dim.dim_param else int(dim.dim_value) for dim in tensor.shape.dim]
    return {"name": value.name, "dtype": _ELEMENT_TYPES.get(tensor.elem_type, str(tensor.elem_type)), "shape": shape}


def graph_signature(path: Path) -> dict[str, list[dict[str, Any]]]:
    """The inputs (optional ones marked, with their default) and outputs of the ONNX file at `path`."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    defaults = {init.name: init for init in model.graph.initializer}
    inputs = []
    for value in model.graph.input:
        entry = _value_info(value)
        if value.name in defaults:
            entry["optional"] = True
            entry["default"] = onnx.numpy_helper.to_array(defaults[value.name]).tolist()
        inputs.append(entry)
    return {"inputs": inputs, "outputs": [_value_info(value) for value in model.graph.output]}


def describe(pipe: RefLDMPipeline, folder: Path, files: dict[str, str], opset: int) -> dict[str, Any]:
    """The description of the graphs `files` (name -> file name) written in `folder` for `pipe`."""
    config = pipe.scheduler.config
    total = int(config.num_train_timesteps)
    betas = np.asarray(config.trained_betas, dtype=np.float64)
    alphas_cumprod = np.cumprod(1.0 - betas)
    graphs = {name: {"file": file, **graph_signature(folder / file)} for name, file in files.items()}
    layers = [
        {
            "name": layer.official_name,
            "refface_name": layer.diffusers_name,
            "key": layer.key_name,
            "value": layer.value_name,
            "heads": layer.heads,
            "head_dim": layer.head_dim,
            "tokens_per_reference": layer.tokens,
        }
        for layer in attention_layers(pipe.unet)
    ]
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "method": "ReF-LDM",
        "opset": opset,
        "image": {
            "size": pipe.image_size,
            "channels_order": "RGB",
            "range": [-1.0, 1.0],
            "from_8bit": "pixel / 127.5 - 1",
            "to_8bit": "floor(clip((x + 1) / 2, 0, 1) * 255)",
        },
        "latent": {
            "channels": pipe.latent_channels,
            "size": pipe.latent_size,
            "downsampling": pipe.image_size // pipe.latent_size,
        },
        "references": {
            "encoding": "all references side by side as one image (concatenated along the width), VQ-encoded once, "
            "split back into one latent per reference along the width",
            "unet_reference_input": "the reference latents [references, channels, size, size]",
            "layout": "[batch, heads, head_dim, references * tokens_per_reference]; references end to end",
            "null_condition": "unet_reference on one all-zero latent, its tokens repeated once per reference",
        },
        "graphs": graphs,
        "host_flags": {"inputs": list(HOST_FLAGS), "feed": [True], "effect": "none; for hosts that bind them"},
        "attention_layers": layers,
        "sampling": {
            "solver": "ddim",
            "eta": 0.0,
            "prediction": "epsilon",
            "clip_x0": False,
            "steps": 50,
            "spacing": "uniform_trailing",
            "spacings": {
                "uniform_trailing": "round(arange(T, 0, -T / steps)) - 1",
                "uniform": "arange(steps) * (T // steps) reversed, + 1",
            },
            "previous_timestep": "t - T // steps; alphas_cumprod[0] where that is below 0",
            "guidance_scale": 1.5,
            "guidance": "eps = eps_null + scale * (eps_references - eps_null); batch order [null, references]; "
            "no guidance without references or with scale 1",
            "strength": {
                "default": 1.0,
                "range": "(0, 1]",
                "rule": "below 1: start at the step whose timestep is nearest strength * T (the first on a tie) "
                "from the LQ latent noised to it: sqrt(a) * lq + sqrt(1 - a) * noise, a = alphas_cumprod[t]",
            },
            "initial_noise": "standard normal, [batch, channels, size, size]",
            "final_latent": "decoded by vq_decoder, which quantizes it first",
            "num_train_timesteps": total,
            "betas_rule": "linspace(sqrt(linear_start), sqrt(linear_end), T) ** 2 in float64",
            "betas": [float(b) for b in betas],
            "alphas_cumprod_dtype": "float32 (the float64 cumulative product of 1 - betas, rounded once)",
            "alphas_cumprod": [float(np.float32(a)) for a in alphas_cumprod],
        },
    }


def write_description(path: Path, description: dict[str, Any]) -> None:
    write_text_atomically(path, json.dumps(description, indent=1) + "\n")


def read_description(folder: str | Path) -> dict[str, Any]:
    """The parsed `refface_onnx.json` of an export folder."""
    return json.loads((Path(folder) / DESCRIPTION_FILE).read_text(encoding="utf-8"))
