"""`refface` command line: a thin layer over the Python API.

Every user mistake ends as one line on stderr and a non-zero exit code, never a traceback.
Each command group lives in its own module and registers itself on the parser here.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from refface.errors import RefFaceError


def build_parser() -> argparse.ArgumentParser:
    from refface.cli import data, evaluate, export, restore, serve, train

    parser = argparse.ArgumentParser(prog="refface", description="Reference-based face restoration.")
    commands = parser.add_subparsers(dest="command", required=True)
    restore.add_commands(commands)
    data.add_commands(commands)
    train.add_commands(commands)
    evaluate.add_commands(commands)
    serve.add_commands(commands)
    export.add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "batch_size", 1) < 1:
        print("refface: error: --batch-size must be at least 1.", file=sys.stderr)
        return 2
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    try:
        return args.handler(args)
    except RefFaceError as error:
        print(f"refface: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("refface: interrupted; no output was left half-written.", file=sys.stderr)
        return 130
