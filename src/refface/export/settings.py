"""What an ONNX export accepts, checked before any weights load (no torch import here)."""

from __future__ import annotations

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
