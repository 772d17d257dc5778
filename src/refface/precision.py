"""Whether this machine computes a dtype natively, so that a slow choice is named before any model work.

Half precision on a CPU without native instructions is not a little slower, it is unusable: one
released-size U-Net call in bf16 did not finish in 10 minutes on an AVX2 CPU (3.3 s in fp32), while
on a CPU with AMX the whole restoration ran about 2x faster in bf16 than in fp32. PyTorch's oneDNN
kernels know which case a machine is; refface asks them.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class HalfPrecision(NamedTuple):
    name: str  # as --dtype spells it
    needs: str  # the x86 instructions oneDNN looks for
    onednn_check: str  # the torch.ops.mkldnn function that looks


HALF = {
    torch.bfloat16: HalfPrecision("bf16", "AVX-512 or AMX", "_is_mkldnn_bf16_supported"),
    torch.float16: HalfPrecision("fp16", "AVX512-FP16 or AMX-FP16", "_is_mkldnn_fp16_supported"),
}


def _onednn_supports(dtype: torch.dtype) -> bool:
    """oneDNN's own check (on Arm: its BF16/FP16 extensions)."""
    try:
        return bool(getattr(torch.ops.mkldnn, HALF[dtype].onednn_check)())
    except (AttributeError, RuntimeError):  # a PyTorch build without oneDNN: nothing known, nothing claimed
        return True


def native_on_cpu(dtype: torch.dtype) -> bool:
    """Whether this CPU runs `dtype`'s matrix products and convolutions with its own instructions."""
    if dtype not in HALF:
        return True
    return _onednn_supports(dtype)


def precision_warning(device: torch.device, dtype: torch.dtype) -> str | None:
    """One sentence when `dtype` on `device` will be far slower than float32, else None."""
    if device.type != "cpu" or native_on_cpu(dtype):
        return None
    name, needs, _ = HALF[dtype]
    return (
        f"{name} has no native support on this CPU (PyTorch needs {needs} for it), so it will run many "
        f"times slower than fp32; use --dtype fp32 here, and {name} on a GPU or a CPU with AMX."
    )
