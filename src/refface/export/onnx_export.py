"""Write a ReF-LDM pipeline as four ONNX graphs and their JSON description, into a folder, atomically.

The graphs are exported with PyTorch's `torch.export`-based exporter (`dynamo=True`, which needs onnxscript):
it is PyTorch's maintained exporter (the TorchScript one is deprecated since 2.9), it keeps the batch and
the number of references symbolic instead of baking the traced sizes into Python-level branches (the legacy
tracer turns shape comparisons in diffusers' blocks into constants), and its graphs are about a third of the
legacy exporter's node count for the same numbers (measured on the tiny U-Net: 403 nodes against 1032, both
within 2e-6 of PyTorch).

Everything is written into a temporary folder beside OUT and renamed into place at the end, so an interrupted
export leaves either the previous folder or the finished one, never half of the files.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from refface.export.description import DESCRIPTION_FILE, describe, write_description
from refface.export.errors import ExportError
from refface.export.graphs import (
    UNetGraph,
    UNetReferenceGraph,
    VQDecoderGraph,
    VQEncoderGraph,
    with_nested_group_norms,
)
from refface.export.host_flags import accept_host_flags
from refface.export.settings import (
    DEFAULT_OPSET,
    GRAPH_FILES,
    SAMPLER_FILE,
    check_exporter,
    check_opset,
    check_output_folder,
)
from refface.pipelines.refldm import RefLDMPipeline

# Names the face-swap hosts bind (see docs/onnx.md); the rest are refface's.
UNET_SAMPLE = "x_noisy_plus_lq_latent"
UNET_TIMESTEPS = "timesteps"
UNET_OUTPUT = "unet_output"
Progress = Callable[[str], None]


@dataclass(frozen=True)
class GraphSpec:
    """One graph to export: the module, example inputs, names and symbolic axes."""

    name: str
    module: nn.Module
    example: tuple
    input_names: list[str]
    output_names: list[str]
    dynamic_shapes: tuple
    # output name -> its axes' names, where the exporter's own would be opaque (s38 for an encoder's h / 8)
    output_axes: tuple[tuple[str, tuple[str | int, ...]], ...] = ()


def check_exportable(pipe: RefLDMPipeline) -> None:
    if not isinstance(pipe, RefLDMPipeline):
        raise ExportError(
            f"ONNX export covers ReF-LDM only; got a {type(pipe).__name__} (the Composite-Context method has no "
            "ONNX export)."
        )
    if pipe.device.type != "cpu" or pipe.unet.dtype != torch.float32 or pipe.vqvae.dtype != torch.float32:
        raise ExportError(
            "ONNX export needs the pipeline's float32 weights on the CPU; call pipe.to('cpu', torch.float32)."
        )


def graph_specs(pipe: RefLDMPipeline) -> list[GraphSpec]:
    """The four graphs with example inputs whose sizes are all different, so no axis gets tied to another."""
    from torch.export import Dim

    size, latent, channels = pipe.image_size, pipe.latent_size, pipe.latent_channels
    factor = size // latent
    # diffusers' upsamplers branch on a batch of 64 or more (a memory-layout choice, the same numbers); bounding
    # the traced range below it lets torch.export trace once instead of failing and retracing with looser axes.
    # ONNX keeps no bound: the graphs run any batch.
    batch, references = Dim("batch", max=63), Dim("references", max=63)
    height, width = Dim("latent_height"), Dim("latent_width")

    vq = with_nested_group_norms(pipe.vqvae)  # a copy: onnxruntime's GroupNorm is inexact at 512 x 512
    encoder = VQEncoderGraph(vq)
    decoder = VQDecoderGraph(vq)
    reference = UNetReferenceGraph(pipe.unet)
    unet = UNetGraph(pipe.unet)
    layers = unet.layers
    kv_names = [name for layer in layers for name in (layer.key_name, layer.value_name)]
    kv_shapes = tuple({0: batch, 3: references * layer.tokens} for layer in layers for _ in range(2))

    generator = torch.Generator().manual_seed(0)
    example_batch, example_refs = 2, 3
    kv_example = tuple(
        torch.randn(example_batch, layer.heads, layer.head_dim, example_refs * layer.tokens, generator=generator)
        for layer in layers
        for _ in range(2)
    )
    return [
        GraphSpec(
            "vq_encoder",
            encoder,
            (torch.rand(2, 3, size, 3 * size, generator=generator) * 2 - 1,),
            ["image"],
            ["latent"],
            ({0: batch, 2: factor * height, 3: factor * width},),
            (("latent", ("batch", channels, "latent_height", "latent_width")),),
        ),
        GraphSpec(
            "vq_decoder",
            decoder,
            (torch.randn(2, channels, latent, 2 * latent, generator=generator),),
            ["latent"],
            ["image"],
            ({0: batch, 2: height, 3: width},),
        ),
        GraphSpec(
            "unet_reference",
            reference,
            (torch.randn(example_refs, channels, latent, latent, generator=generator),),
            ["reference_latents"],
            kv_names,
            ({0: references},),
        ),
        GraphSpec(
            "unet",
            unet,
            (
                torch.randn(example_batch, 2 * channels, latent, latent, generator=generator),
                torch.tensor([999, 499]),
                *kv_example,
            ),
            [UNET_SAMPLE, UNET_TIMESTEPS, *kv_names],
            [UNET_OUTPUT],
            ({0: batch}, {0: batch}, kv_shapes),
        ),
    ]


def _export_graph(spec: GraphSpec, target: Path, opset: int) -> None:
    try:
        import onnxscript  # noqa: F401  (the dynamo exporter's dependency; say so before a long trace)
    except ImportError:
        raise ExportError("ONNX export needs onnxscript; install it with pip install 'refface[onnx]'.") from None
    import onnx

    from refface import speedups

    spec.module.eval()
    with speedups.disabled(), torch.no_grad(), _quiet_exporter():
        program = torch.onnx.export(
            spec.module,
            spec.example,
            input_names=spec.input_names,
            output_names=spec.output_names,
            dynamic_shapes=spec.dynamic_shapes,
            opset_version=opset,
            dynamo=True,
            optimize=True,
            verbose=False,
        )
    model = program.model_proto
    _name_axes(model, dict(spec.output_axes))
    if spec.name == "unet":
        model = accept_host_flags(model, UNET_OUTPUT)
    onnx.save_model(model, str(target))


def _name_axes(model, axes: dict[str, tuple[str | int, ...]]) -> None:
    for value in model.graph.output:
        if value.name in axes:
            for dim, name in zip(value.type.tensor_type.shape.dim, axes[value.name], strict=True):
                if isinstance(name, str):
                    dim.dim_param = name
                else:
                    dim.dim_value = name


@contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter's notes (axis renames, torchvision's absence) are not the user's business."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def export_onnx(
    pipe: RefLDMPipeline,
    output: str | Path,
    opset: int = DEFAULT_OPSET,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> Path:
    """Write `vq_encoder.onnx`, `vq_decoder.onnx`, `unet_reference.onnx`, `unet.onnx` and `refface_onnx.json`
    for `pipe` into the folder `output`; returns the folder. An existing non-empty folder needs `overwrite`."""
    target = Path(output)
    check_exporter()
    check_opset(opset)
    check_exportable(pipe)
    check_output_folder(target, overwrite)
    say = progress or (lambda message: None)

    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent))
    try:
        for spec in graph_specs(pipe):
            say(f"exporting {GRAPH_FILES[spec.name]}")
            _export_graph(spec, staging / GRAPH_FILES[spec.name], opset)
        write_description(staging / DESCRIPTION_FILE, describe(pipe, staging, GRAPH_FILES, opset))
        # the numpy + onnxruntime sampler, so the folder restores faces where refface is not installed
        shutil.copyfile(Path(__file__).with_name(SAMPLER_FILE), staging / SAMPLER_FILE)
        os.chmod(staging, 0o777 & ~_umask())
        _replace_folder(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _replace_folder(staging: Path, target: Path) -> None:
    """Put `staging` where `target` is: a rename; an existing `target` is moved aside first and then removed."""
    if not target.exists():
        os.replace(staging, target)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
    os.replace(target, aside / target.name)
    try:
        os.replace(staging, target)
    except BaseException:
        os.replace(aside / target.name, target)
        raise
    finally:
        shutil.rmtree(aside, ignore_errors=True)
