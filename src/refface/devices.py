"""Which device and dtype a front end runs on: the names users choose ("auto", "cuda", "bf16") as torch objects.

The command line and the ComfyUI nodes offer the same choices, so they resolve them here.
"""

from __future__ import annotations

import torch

from refface.errors import RefFaceError

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def resolve_device(name: str, option: str = "--device") -> torch.device:
    """auto = CUDA, else Apple MPS, else CPU; an explicit unavailable device is an error naming `option`."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if _mps_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RefFaceError(f"{option} cuda was requested but PyTorch sees no CUDA GPU on this machine.")
    if name == "mps" and not _mps_available():
        raise RefFaceError(f"{option} mps was requested but Apple MPS is not available on this machine.")
    return torch.device(name)
