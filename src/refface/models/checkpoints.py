"""Read the official `refldm.ckpt` / `vqgan.ckpt` files without unpickling code.

Facts of the release: `refldm.ckpt` is a flat state dict (`model.diffusion_model.*`, optionally
`model_ema.*` in LitEma naming, `first_stage_model.*` and schedule buffers); `vqgan.ckpt` is
`{"state_dict": ...}` that also holds training-only `loss.*` weights.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path

import torch

from refface.errors import RefFaceError, require_file, short_reason

UNET_PREFIX = "model.diffusion_model."
EMA_PREFIX = "model_ema."
FIRST_STAGE_PREFIX = "first_stage_model."
TRAINING_ONLY_PREFIXES = ("loss.",)


def read_state_dict(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    """Load a checkpoint with `weights_only=True`, unwrapping a `state_dict` entry if present."""
    source = require_file(path, f"{what} file")
    try:
        loaded = torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(error))
        if found:
            raise RefFaceError(
                f"The {what} file {source} contains Python objects ({found.group(1)}) besides tensors and was "
                "not loaded, since unpickling them could run code."
            ) from None
        raise RefFaceError(
            f"The {what} file {source} is not a readable PyTorch checkpoint (damaged or another format)."
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as error:
        first = short_reason(error)
        raise RefFaceError(f"The {what} file {source} is not a readable PyTorch checkpoint ({first}).") from None
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise RefFaceError(f"The {what} file {source} is not a state dict of tensors.")
    return loaded


def _ema_name(unet_key: str) -> str:
    """LitEma stores `model.diffusion_model.a.b` as `model_ema.diffusion_modelab`."""
    return EMA_PREFIX + unet_key[len("model.") :].replace(".", "")


def select_unet_weights(
    state: dict[str, torch.Tensor], source: str | Path, prefer_ema: bool = True
) -> dict[str, torch.Tensor]:
    """The denoiser weights with the `model.diffusion_model.` prefix removed; EMA ones when stored.

    The official inference runs under `ema_scope()`, i.e. with the EMA weights whenever the
    checkpoint has them, so that is what we load unless `prefer_ema` is False.
    """
    raw_keys = [k for k in state if k.startswith(UNET_PREFIX)]
    if not raw_keys:
        raise RefFaceError(
            f"The checkpoint {source} has no denoiser weights ({UNET_PREFIX}*); is it the ReF-LDM refldm.ckpt?"
        )
    ema_bookkeeping = (EMA_PREFIX + "decay", EMA_PREFIX + "num_updates")
    has_ema = any(k.startswith(EMA_PREFIX) and k not in ema_bookkeeping for k in state)
    use_ema = prefer_ema and has_ema
    if use_ema:
        missing = [k for k in raw_keys if _ema_name(k) not in state]
        if missing:
            raise RefFaceError(
                f"The checkpoint {source} has EMA weights for only part of the denoiser "
                f"({len(missing)} of {len(raw_keys)} missing, e.g. {_ema_name(missing[0])})."
            )
    return {k[len(UNET_PREFIX) :]: state[_ema_name(k)] if use_ema else state[k] for k in raw_keys}


def select_vq_weights(
    vq_state: dict[str, torch.Tensor] | None, refldm_state: dict[str, torch.Tensor], source: str | Path
) -> dict[str, torch.Tensor]:
    """VQGAN weights, as the official script ends up with them.

    It loads vqgan.ckpt first, then refldm.ckpt with strict=False, so `first_stage_model.*`
    entries of refldm.ckpt (when present) override those of vqgan.ckpt.
    """
    merged = {k: v for k, v in (vq_state or {}).items() if not k.startswith(TRAINING_ONLY_PREFIXES)}
    for key, value in refldm_state.items():
        if key.startswith(FIRST_STAGE_PREFIX) and not key[len(FIRST_STAGE_PREFIX) :].startswith(TRAINING_ONLY_PREFIXES):
            merged[key[len(FIRST_STAGE_PREFIX) :]] = value
    if not merged:
        raise RefFaceError(f"No VQGAN weights were found for {source}: pass the vqgan.ckpt file with --vqgan.")
    return merged


def load_converted(
    module: torch.nn.Module, weights: dict[str, torch.Tensor], source: str | Path, assign: bool = False
) -> None:
    """Load converted weights strictly; a shape mismatch is one sentence naming `source` and the first bad tensor.

    `assign=True` adopts the tensors as they are (for modules built on the meta device).
    """
    try:
        module.load_state_dict(weights, strict=True, assign=assign)
    except RuntimeError as error:
        lines = str(error).splitlines()
        detail = lines[1].strip() if len(lines) > 1 else lines[0]
        raise RefFaceError(f"The weights in {source} have the wrong shapes for this architecture ({detail}).") from None
    check_finite(module, source)


def check_finite(module: torch.nn.Module, source: str | Path) -> None:
    """Refuse weights that are not all finite numbers (a damaged or badly trained file restores only garbage)."""
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        if tensor.is_floating_point() and tensor.device.type != "meta" and not bool(torch.isfinite(tensor).all()):
            raise RefFaceError(
                f"The weights in {source} are not all finite numbers ({name} holds NaN or infinity); the file is "
                "damaged or was saved from a diverged training run."
            )
