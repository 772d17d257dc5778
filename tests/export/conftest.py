"""One ONNX export of the official-slim model, shared by the export tests (the export is the slow part)."""

from __future__ import annotations

from pathlib import Path

import pytest

from refface.export.onnx_export import export_onnx


@pytest.fixture(scope="session")
def slim_onnx(slim_pipeline, tmp_path_factory) -> Path:
    """The official-slim ReF-LDM exported with the default opset."""
    return export_onnx(slim_pipeline, tmp_path_factory.mktemp("slim") / "onnx")
