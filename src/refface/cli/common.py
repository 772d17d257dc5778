"""Pieces every `refface` command shares: device choice, dtypes, quiet printing."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from refface.errors import RefFaceError
from refface.precision import precision_warning

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(name: str) -> torch.device:
    """auto = CUDA, else Apple MPS, else CPU; an explicit unavailable device is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RefFaceError("--device cuda was requested but PyTorch sees no CUDA GPU on this machine.")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise RefFaceError("--device mps was requested but Apple MPS is not available on this machine.")
    return torch.device(name)


def checked_dtype(device: torch.device, dtype_name: str) -> torch.dtype:
    """The --dtype a command runs with; one this CPU lacks native support for is warned about on stderr."""
    warning = precision_warning(device, DTYPES[dtype_name])
    if warning:
        print(f"refface: warning: {warning}", file=sys.stderr)
    return DTYPES[dtype_name]


def unique_stems(paths: Sequence[str]) -> list[str]:
    stems = [Path(p).stem for p in paths]
    if len(set(stems)) != len(stems):
        raise RefFaceError("Several photos share a file name, so their results would collide in the output folder.")
    return stems


def face_selection(value: str) -> str | int:
    if value in ("all", "largest", "auto"):
        return value
    try:
        index = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected all, largest, auto or a face number, got {value!r}") from None
    if index < 0:
        raise argparse.ArgumentTypeError(f"face numbers start at 0, got {index}")
    return index


def say(args: argparse.Namespace, message: str) -> None:
    if not args.quiet:
        print(message)


def add_guidance_options(parser: argparse.ArgumentParser) -> None:
    """--cfg, --lq-guidance and --no-color-fix: the guidance of either method (checked by pipelines.options)."""
    parser.add_argument(
        "--cfg", type=float, help="guidance toward the references (default: 1.5 for refldm, s_c = 1.2 for composite)"
    )
    parser.add_argument("--lq-guidance", type=float, help="composite: guidance toward the LQ image s_i (default 1.2)")
    parser.add_argument("--no-color-fix", action="store_true", help="composite: skip the AdaIN colour fix")
