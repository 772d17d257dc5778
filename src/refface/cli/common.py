"""Pieces every `refface` command shares: device choice, dtypes, quiet printing."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from refface.devices import DEVICE_NAMES, DTYPE_NAMES, resolve_device, torch_dtype
from refface.errors import RefFaceError

if TYPE_CHECKING:
    import torch

__all__ = ["DEVICE_NAMES", "DTYPE_NAMES", "resolve_device"]  # the CLI's commands import them from here


def checked_dtype(device: torch.device, dtype_name: str) -> torch.dtype:
    """The --dtype a command runs with; one this CPU lacks native support for is warned about on stderr."""
    from refface.precision import precision_warning

    dtype = torch_dtype(dtype_name)
    warning = precision_warning(device, dtype)
    if warning:
        print(f"refface: warning: {warning}", file=sys.stderr)
    return dtype


def unique_stems(paths: Sequence[str]) -> list[str]:
    stems = [Path(p).stem for p in paths]
    if len(set(stems)) != len(stems):
        raise RefFaceError("Several photos share a file name, so their results would collide in the output folder.")
    return stems


def face_selection(value: str) -> str | int:
    """--face as argparse reads it: a face number or a word, checked by the run's settings (one rule for every
    front end)."""
    from refface.restoration.settings import face_choice

    try:
        return face_choice(int(value) if value.lstrip("-").isdigit() else value)
    except RefFaceError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def say(args: argparse.Namespace, message: str) -> None:
    if not args.quiet:
        print(message)


def method_help() -> str:
    """--method's help: each method's name and where its weights come from, the default first-named."""
    from refface import methods

    parts = [f"{m.name} ({'default; ' if m.name == methods.DEFAULT else ''}{m.summary})" for m in methods.METHODS]
    return " or ".join([", ".join(parts[:-1]), parts[-1]] if len(parts) > 1 else parts)


def add_guidance_options(parser: argparse.ArgumentParser) -> None:
    """--guidance (alias --cfg), --lq-guidance, --no-color-fix, --fidelity and --context: each method's, checked by
    refface.methods."""
    from refface import methods
    from refface.pipelines.base import CONTEXTS

    defaults = ", ".join(f"{m.defaults.guidance} for {m.name}" for m in methods.METHODS if m.defaults.guidance)
    with_lq = [m for m in methods.METHODS if m.defaults.lq_guidance is not None]
    lq_names = ", ".join(m.name for m in with_lq)
    lq_defaults = ", ".join(str(m.defaults.lq_guidance) for m in with_lq)
    parser.add_argument(
        "--guidance", "--cfg", dest="guidance", type=float, help=f"guidance toward the references (default: {defaults})"
    )
    parser.add_argument(
        "--lq-guidance", type=float, help=f"{lq_names}: guidance toward the LQ image s_i (default {lq_defaults})"
    )
    parser.add_argument("--no-color-fix", action="store_true", help=f"{lq_names}: skip the AdaIN colour fix")
    with_fidelity = [m for m in methods.METHODS if m.defaults.fidelity is not None]
    parser.add_argument(
        "--fidelity", type=float,
        help=f"{', '.join(m.name for m in with_fidelity)}: the fidelity weight w, 0 (the codebook's face) to 1 (closer "
        f"to the input) (default {', '.join(str(m.defaults.fidelity) for m in with_fidelity)})",
    )  # fmt: skip
    with_context = ", ".join(m.name for m in methods.METHODS if m.defaults.context is not None)
    parser.add_argument(
        "--context", choices=CONTEXTS,
        help=f"{with_context}: the reference context that guides: both (default), identity (the ArcFace token "
        "only) or appearance (the FaRL tokens only), as the paper's Table 5",
    )  # fmt: skip
