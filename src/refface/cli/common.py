"""Pieces every `refface` command shares: device choice, dtypes, quiet printing."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from refface.devices import DTYPES, resolve_device
from refface.errors import RefFaceError
from refface.precision import precision_warning

__all__ = ["DTYPES", "resolve_device"]  # the CLI's commands import them from here


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


def method_help() -> str:
    """--method's help: each method's name and where its weights come from, the default first-named."""
    from refface import methods

    parts = [f"{m.name} ({'default; ' if m.name == methods.DEFAULT else ''}{m.summary})" for m in methods.METHODS]
    return " or ".join([", ".join(parts[:-1]), parts[-1]] if len(parts) > 1 else parts)


def add_guidance_options(parser: argparse.ArgumentParser) -> None:
    """--guidance (alias --cfg), --lq-guidance and --no-color-fix: each method's, checked by refface.methods."""
    from refface import methods

    defaults = ", ".join(f"{m.guidance} for {m.name}" for m in methods.METHODS)
    with_lq = [m for m in methods.METHODS if m.lq_guidance is not None]
    lq_names = ", ".join(m.name for m in with_lq)
    lq_defaults = ", ".join(str(m.lq_guidance) for m in with_lq)
    parser.add_argument(
        "--guidance", "--cfg", dest="guidance", type=float, help=f"guidance toward the references (default: {defaults})"
    )
    parser.add_argument(
        "--lq-guidance", type=float, help=f"{lq_names}: guidance toward the LQ image s_i (default {lq_defaults})"
    )
    parser.add_argument("--no-color-fix", action="store_true", help=f"{lq_names}: skip the AdaIN colour fix")
