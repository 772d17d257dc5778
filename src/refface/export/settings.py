"""What an ONNX export accepts, checked before any weights load (torch only asked for its version)."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

from refface.export.errors import ExportError

DEFAULT_OPSET = 18
# The exporter writes opset 18 natively and converts to the later ones; ONNX Runtime 1.20+ runs all of them.
SUPPORTED_OPSETS = range(18, 24)

GRAPH_FILES = {
    "vq_encoder": "vq_encoder.onnx",
    "vq_decoder": "vq_decoder.onnx",
    "unet_reference": "unet_reference.onnx",
    "unet": "unet.onnx",
}
SAMPLER_FILE = "onnx_sampler.py"
# torch's ONNX exporter (dynamo) fails on these graphs in 2.6.0 and 2.9.1, and exports them in 2.13.0.
EXPORTER_TORCH = (2, 13)


def _torch_release() -> tuple[int, int]:
    found = re.match(r"(\d+)\.(\d+)", metadata.version("torch"))
    return (int(found[1]), int(found[2])) if found else (0, 0)


def exporter_available() -> bool:
    """Whether the installed torch exports refface's graphs (refface itself runs on older releases too)."""
    return _torch_release() >= EXPORTER_TORCH


def check_exporter() -> None:
    if not exporter_available():
        release = ".".join(map(str, EXPORTER_TORCH))
        raise ExportError(
            f"ONNX export needs torch {release} or newer (older releases' exporter fails on these graphs); this "
            f"environment has torch {metadata.version('torch')}."
        )


def check_opset(opset: int) -> None:
    if opset not in SUPPORTED_OPSETS:
        raise ExportError(
            f"ONNX opset {opset} is not supported; choose one from {SUPPORTED_OPSETS.start} to "
            f"{SUPPORTED_OPSETS.stop - 1} (default {DEFAULT_OPSET})."
        )


def check_output_folder(output: Path, overwrite: bool) -> None:
    """OUT may be new or an empty folder; a non-empty one only with `overwrite`; never a file."""
    if output.exists() and not output.is_dir():
        raise ExportError(f"The output {output} is a file; ONNX export writes a folder.")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise ExportError(f"The output folder {output} exists and is not empty; pass --overwrite to replace it.")
    if not output.absolute().parent.is_dir():
        raise ExportError(f"The folder {output.absolute().parent} for the output does not exist.")
