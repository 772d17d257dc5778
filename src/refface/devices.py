"""Which device and dtype a front end runs on: the names users choose ("auto", "cuda", "bf16") as torch objects.

The command line, the web server and the ComfyUI nodes offer the same choices, so they are named and resolved
here. torch is imported when a name is resolved, not with this module: argument parsing reads the names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from refface.errors import RefFaceError

if TYPE_CHECKING:
    import torch

DEVICE_NAMES = ("auto", "cpu", "cuda", "mps")
DTYPE_NAMES = ("fp32", "fp16", "bf16")


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype a --dtype name stands for."""
    import torch

    dtypes = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if name not in dtypes:
        raise RefFaceError(f"Unknown dtype {name!r}; choose one of {', '.join(DTYPE_NAMES)}.")
    return dtypes[name]


def _mps_available() -> bool:
    import torch

    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def resolve_device(name: str, option: str = "--device") -> torch.device:
    """auto = CUDA, else Apple MPS, else CPU; an explicit unavailable device is an error naming `option`."""
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if _mps_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RefFaceError(f"{option} cuda was requested but PyTorch sees no CUDA GPU on this machine.")
    if name == "mps" and not _mps_available():
        raise RefFaceError(f"{option} mps was requested but Apple MPS is not available on this machine.")
    return torch.device(name)
