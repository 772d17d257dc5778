"""onnxruntime against PyTorch: each exported graph on random inputs, the largest absolute difference.

The PyTorch side is refface's own path with its CPU speed-ups off (the plain float32 modules the graphs were
traced from): the VQ encoder and decoder, the reference pass and one denoiser call. The inputs are drawn at
sizes the export's example did not use (by default batch 1, as hosts run the graphs, and 2 references), so a
graph that baked in a traced size fails here rather than in a host. Batch 1 is also where PyTorch's own fp32 VQ
decoder is at its most exact (at batch 2 it was 1.8e-4 from float64 on the full-size model, onnxruntime 5e-6).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from refface.export.description import read_description
from refface.export.errors import ExportError
from refface.export.graphs import UNetGraph, UNetReferenceGraph, VQDecoderGraph, VQEncoderGraph
from refface.export.host_flags import HOST_FLAGS
from refface.pipelines.refldm import RefLDMPipeline


def ort_session(path: Path, threads: int | None = None):
    """A CPU onnxruntime session for `path`, or one sentence saying onnxruntime is missing."""
    try:
        import onnxruntime
    except ImportError:
        raise ExportError(
            "Verifying the export needs onnxruntime; install it with pip install 'refface[onnx]'."
        ) from None
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    if threads is not None:
        options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _max_difference(got: list[np.ndarray], want: list[torch.Tensor]) -> float:
    worst = 0.0
    for a, b in zip(got, want, strict=True):
        if tuple(a.shape) != tuple(b.shape):
            raise AssertionError(f"onnxruntime returned shape {a.shape}, PyTorch {tuple(b.shape)}.")
        worst = max(worst, float(np.abs(a - b.numpy()).max()) if a.size else 0.0)
    return worst


def verify_export(
    pipe: RefLDMPipeline, folder: str | Path, batch: int = 1, references: int = 2, seed: int = 0
) -> dict[str, float]:
    """Max abs difference between onnxruntime and PyTorch (fp32, CPU) per graph of the export in `folder`."""
    from refface import speedups

    folder = Path(folder)
    description = read_description(folder)
    files = {name: folder / graph["file"] for name, graph in description["graphs"].items()}
    size, latent, channels = pipe.image_size, pipe.latent_size, pipe.latent_channels
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator)

    results: dict[str, float] = {}
    with speedups.disabled(), torch.no_grad():
        wide = torch.rand(1, 3, size, references * size, generator=generator) * 2 - 1
        want = VQEncoderGraph(pipe.vqvae)(wide)
        got = ort_session(files["vq_encoder"]).run(None, {"image": wide.numpy()})
        results["vq_encoder"] = _max_difference(got, [want])

        # Latents near codebook vectors, as sampled latents are: where two codes are (nearly) equally near, the
        # nearest one is a rounding tie that each runtime may break its own way, and the decoder shows it.
        codebook = pipe.vqvae.quantize.embedding.weight
        codes = torch.randint(0, codebook.shape[0], (batch, latent, latent), generator=generator)
        near = codebook[codes].permute(0, 3, 1, 2) + 0.05 * codebook.std() * rand(batch, channels, latent, latent)
        latents = near.contiguous()
        want = VQDecoderGraph(pipe.vqvae)(latents)
        got = ort_session(files["vq_decoder"]).run(None, {"latent": latents.numpy()})
        results["vq_decoder"] = _max_difference(got, [want])

        reference_graph = UNetReferenceGraph(pipe.unet)
        ref_latents = rand(references, channels, latent, latent)
        want_kv = reference_graph(ref_latents)
        got_kv = ort_session(files["unet_reference"]).run(None, {"reference_latents": ref_latents.numpy()})
        results["unet_reference"] = _max_difference(got_kv, list(want_kv))

        unet = UNetGraph(pipe.unet)
        sample = rand(batch, 2 * channels, latent, latent)
        timesteps = torch.randint(0, pipe.scheduler.config.num_train_timesteps, (batch,), generator=generator)
        # realistic keys/values: the reference pass's, a different scale for each batch item
        kv = [torch.cat([t * (1 + 0.25 * i) for i in range(batch)]) for t in want_kv]
        want = unet(sample, timesteps, *kv)
        names = [name for layer in unet.layers for name in (layer.key_name, layer.value_name)]
        feeds = {"x_noisy_plus_lq_latent": sample.numpy(), "timesteps": timesteps.numpy()}
        feeds.update({name: t.numpy() for name, t in zip(names, kv, strict=True)})
        feeds.update({flag: np.array([True]) for flag in HOST_FLAGS})
        got = ort_session(files["unet"]).run(None, feeds)
        results["unet"] = _max_difference(got, [want])
    return results
