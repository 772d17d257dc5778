"""One ONNX export of the official-slim model, made through the command line with --verify and shared by the
export tests (the export is the slow part)."""

from __future__ import annotations

import io
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pytest

from refface.cli import main
from refface.export.settings import EXPORTER_TORCH, exporter_available


@dataclass(frozen=True)
class CommandRun:
    folder: Path
    exit_code: int
    printed: str


@pytest.fixture(scope="session")
def slim_export(slim, tmp_path_factory) -> CommandRun:
    """`refface export onnx OUT --checkpoint ... --vqgan ... --config ... --verify` on the official-slim files."""
    if not exporter_available():  # refface runs on older torch releases; their exporter does not
        pytest.skip(f"ONNX export needs torch {'.'.join(map(str, EXPORTER_TORCH))} or newer")
    folder = tmp_path_factory.mktemp("slim") / "onnx"
    weights = ["--checkpoint", str(slim / "refldm.ckpt"), "--vqgan", str(slim / "vqgan.ckpt")]
    printed = io.StringIO()
    with redirect_stdout(printed):
        code = main(["export", "onnx", str(folder), *weights, "--config", str(slim / "config.yaml"), "--verify"])
    return CommandRun(folder, code, printed.getvalue())


@pytest.fixture(scope="session")
def slim_onnx(slim_export) -> Path:
    assert slim_export.exit_code == 0, slim_export.printed
    return slim_export.folder
