"""`refface` command line: a thin layer over the Python API.

Every user mistake ends as one line on stderr and a non-zero exit code, never a traceback.
Each command group lives in its own module and registers itself on the parser here. Only the group of the
command being run builds its arguments (some need the libraries behind them to list their choices); the others
are named with their one-line help, so `refface --help` and a command's own help print at once.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from refface.errors import RefFaceError

GROUPS = ("restore", "demo", "data", "train", "evaluate", "serve", "export")  # modules of refface.cli


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The `refface` parser: every command built in full, or with `command` only that command's group (the
    others named with their help; "" names them all)."""
    parser = argparse.ArgumentParser(prog="refface", description="Reference-based face restoration.")
    commands = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        module = importlib.import_module(f"refface.cli.{group}")
        if command is None or command in module.COMMANDS:
            module.add_commands(commands)
        else:
            for name, text in module.COMMANDS.items():
                commands.add_parser(name, help=text)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((word for word in argv if not word.startswith("-")), "")
    args = build_parser(command).parse_args(argv)
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
    except OSError as error:  # reading or writing a file failed where no sentence of our own was ready
        where = f" ({error.filename})" if error.filename else ""
        print(f"refface: error: {error.strerror or error}{where}.", file=sys.stderr)
        return 1
