"""One entry point that finds the ReF-LDM weights a user means: a saved folder, official files, or the release."""

from __future__ import annotations

from pathlib import Path

from refface.errors import RefFaceError
from refface.pipelines.refldm import RefLDMPipeline
from refface.weights import REFLDM_WEIGHTS, VQGAN_WEIGHTS, ensure_weights


def load_saved(folder: str | Path) -> RefLDMPipeline:
    """A pipeline written by `save_pretrained` (diffusers layout, safetensors)."""
    source = Path(folder)
    if not (source / "model_index.json").is_file():
        raise RefFaceError(f"The model folder {source} has no model_index.json; write one with `refface convert`.")
    try:
        pipe = RefLDMPipeline.from_pretrained(source)
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise RefFaceError(f"The model folder {source} could not be loaded ({reason}).") from None
    return pipe.eval_mode()


def load_refldm(
    model: str | Path | None = None,
    checkpoint: str | Path | None = None,
    vqgan: str | Path | None = None,
    config: str | Path | None = None,
) -> RefLDMPipeline:
    """Load from `model` (saved folder), else `checkpoint` (+ `vqgan`, `config`), else the released weights."""
    if model is not None:
        if checkpoint is not None or vqgan is not None or config is not None:
            raise RefFaceError(
                "--model already holds every weight; do not combine it with --checkpoint/--vqgan/--config."
            )
        return load_saved(model)
    if checkpoint is None:
        if vqgan is not None or config is not None:
            raise RefFaceError("--vqgan and --config describe an official checkpoint; pass it with --checkpoint.")
        checkpoint = ensure_weights(REFLDM_WEIGHTS)
        vqgan = ensure_weights(VQGAN_WEIGHTS)
    return RefLDMPipeline.from_official(checkpoint, vqgan, config)
