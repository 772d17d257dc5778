"""The exported graphs of the official-slim model in onnxruntime against refface's PyTorch path."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime
import pytest
import torch

from refface import speedups
from refface.export.description import read_description
from refface.export.host_flags import HOST_FLAGS
from refface.export.names import attention_layers
from refface.export.verify import verify_export
from refface.models.cache_kv import ReferenceBatch
from refface.models.unet import denoise, denoise_copies

pytestmark = pytest.mark.slow  # every test here reads the shared ONNX export, the slow part

TOL = 1e-4


def _session(folder, name):
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(str(folder / f"{name}.onnx"), options, providers=["CPUExecutionProvider"])


def _kv_feeds(session_outputs, names):
    return dict(zip(names, session_outputs, strict=True))


def test_folder_holds_the_graphs_description_and_sampler(slim_onnx):
    names = sorted(path.name for path in slim_onnx.iterdir())
    assert names == sorted(
        [
            "vq_encoder.onnx",
            "vq_decoder.onnx",
            "unet_reference.onnx",
            "unet.onnx",
            "refface_onnx.json",
            "onnx_sampler.py",
        ]
    )


def test_description_names_every_input_with_its_layout(slim_onnx, slim_pipeline):
    description = read_description(slim_onnx)
    layers = attention_layers(slim_pipeline.unet)
    unet = description["graphs"]["unet"]
    inputs = {entry["name"]: entry for entry in unet["inputs"]}
    latent, channels = slim_pipeline.latent_size, slim_pipeline.latent_channels
    assert inputs["x_noisy_plus_lq_latent"] == {
        "name": "x_noisy_plus_lq_latent",
        "dtype": "float32",
        "shape": ["batch", 2 * channels, latent, latent],
    }
    assert inputs["timesteps"]["dtype"] == "int64" and inputs["timesteps"]["shape"] == ["batch"]
    for layer in layers:
        for name in (layer.key_name, layer.value_name):
            assert inputs[name]["shape"] == ["batch", layer.heads, layer.head_dim, f"{layer.tokens}*references"]
    for flag in HOST_FLAGS:  # bound by face-swap hosts; they change nothing
        assert inputs[flag] == {"name": flag, "dtype": "bool", "shape": [1]}
    assert unet["outputs"] == [
        {"name": "unet_output", "dtype": "float32", "shape": ["batch", channels, latent, latent]}
    ]
    reference_outputs = description["graphs"]["unet_reference"]["outputs"]
    assert [o["name"] for o in reference_outputs] == [n for layer in layers for n in (layer.key_name, layer.value_name)]
    assert description["graphs"]["vq_encoder"]["outputs"][0]["shape"] == [
        "batch",
        channels,
        "latent_height",
        "latent_width",
    ]
    sampling = description["sampling"]
    want = slim_pipeline.scheduler.alphas_cumprod.numpy()
    assert np.array_equal(np.asarray(sampling["alphas_cumprod"], np.float32), want)
    assert np.allclose(np.cumprod(1 - np.asarray(sampling["betas"])), want, rtol=1e-6)
    assert (sampling["steps"], sampling["guidance_scale"], sampling["spacing"]) == (50, 1.5, "uniform_trailing")
    json.dumps(description)  # plain JSON types only


@pytest.mark.parametrize(("batch", "references"), [(1, 1), (3, 2), (2, 4)])
def test_every_graph_matches_pytorch(slim_onnx, slim_pipeline, batch, references):
    differences = verify_export(slim_pipeline, slim_onnx, batch=batch, references=references, seed=batch)
    assert set(differences) == {"vq_encoder", "vq_decoder", "unet_reference", "unet"}
    assert max(differences.values()) < TOL, differences


def test_reference_pass_and_guided_unet_reproduce_refface_guidance(slim_onnx, slim_pipeline):
    """unet_reference's outputs fed to unet.onnx give refface's guided noise estimate, with the null condition
    as repeated tokens (refface attends one copy with a log-count bias)."""
    pipe, layers = slim_pipeline, attention_layers(slim_pipeline.unet)
    names = [n for layer in layers for n in (layer.key_name, layer.value_name)]
    generator = torch.Generator().manual_seed(3)
    refs = torch.randn(3, pipe.latent_channels, pipe.latent_size, pipe.latent_size, generator=generator)
    sample = torch.randn(2, 2 * pipe.latent_channels, pipe.latent_size, pipe.latent_size, generator=generator)
    t = torch.tensor(599)
    with speedups.disabled(), torch.no_grad():
        cache = pipe._reference_pass(refs)
        context = ReferenceBatch(((2, pipe.null_references(3)), (2, cache)))
        want = denoise_copies(pipe.unet, sample, t, context, copies=2)
    reference = _session(slim_onnx, "unet_reference")
    kv = _kv_feeds(reference.run(names, {"reference_latents": refs.numpy()}), names)
    null = _kv_feeds(reference.run(names, {"reference_latents": np.zeros_like(refs.numpy()[:1])}), names)
    feeds = {name: np.concatenate([np.tile(null[name], (2, 1, 1, 3)), np.repeat(kv[name], 2, 0)]) for name in names}
    feeds["x_noisy_plus_lq_latent"] = torch.cat([sample, sample]).numpy()
    feeds["timesteps"] = np.full(4, 599, np.int64)
    feeds.update({flag: np.array([True]) for flag in HOST_FLAGS})
    got = _session(slim_onnx, "unet").run(["unet_output"], feeds)[0]
    assert np.abs(got - want.numpy()).max() < TOL
    assert np.abs(got[:2] - got[2:]).mean() > 1e-3  # the references matter


def test_no_reference_tokens_is_plain_self_attention(slim_onnx, slim_pipeline):
    pipe, layers = slim_pipeline, attention_layers(slim_pipeline.unet)
    sample = torch.randn(2, 2 * pipe.latent_channels, pipe.latent_size, pipe.latent_size)
    with speedups.disabled(), torch.no_grad():
        want = denoise(pipe.unet, sample, torch.tensor([10, 900]), ReferenceBatch(((2, None),)))
    feeds = {"x_noisy_plus_lq_latent": sample.numpy(), "timesteps": np.array([10, 900])}
    feeds.update({flag: np.array([False]) for flag in HOST_FLAGS})
    for layer in layers:
        for name in (layer.key_name, layer.value_name):
            feeds[name] = np.zeros((2, layer.heads, layer.head_dim, 0), np.float32)
    got = _session(slim_onnx, "unet").run(None, feeds)[0]
    assert np.abs(got - want.numpy()).max() < TOL


def test_host_flags_bind_through_iobinding_and_change_nothing(slim_onnx, slim_pipeline):
    """Face-swap hosts bind every input with IOBinding, the two flags included (as bool [1]), one reference."""
    session = _session(slim_onnx, "unet")
    layers = attention_layers(slim_pipeline.unet)
    rng = np.random.default_rng(0)
    latent = slim_pipeline.latent_size
    feeds = {
        "x_noisy_plus_lq_latent": rng.standard_normal(
            (1, 2 * slim_pipeline.latent_channels, latent, latent), dtype=np.float32
        ),
        "timesteps": np.array([500], np.int64),
    }
    for layer in layers:
        for name in (layer.key_name, layer.value_name):
            feeds[name] = rng.standard_normal((1, layer.heads, layer.head_dim, layer.tokens), dtype=np.float32)
    plain = session.run(["unet_output"], {**feeds, **{flag: np.array([True]) for flag in HOST_FLAGS}})[0]
    for values in ([True, True], [False, True], [False, False]):
        binding = session.io_binding()
        for name, array in feeds.items():
            binding.bind_cpu_input(name, array)
        for flag, value in zip(HOST_FLAGS, values, strict=True):
            binding.bind_cpu_input(flag, np.array([value]))
        binding.bind_output("unet_output")
        session.run_with_iobinding(binding)
        assert np.array_equal(binding.copy_outputs_to_cpu()[0], plain)
