"""The export's own error type, so callers can tell export problems apart (it is still a RefFaceError)."""

from __future__ import annotations

from refface.errors import RefFaceError


class ExportError(RefFaceError):
    """A problem with an ONNX export's inputs, output folder or environment, in one sentence."""
