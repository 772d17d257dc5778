"""Loading a pipeline from where its weights are: a saved folder, ReF-LDM's official files, or the release.

Which method a folder holds and which combinations of files make sense are the method registry's to judge
(the `methods` module), before any of this runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from refface.errors import RefFaceError, short_reason
from refface.models.checkpoints import check_finite
from refface.pipelines.refldm import RefLDMPipeline
from refface.weights import REFLDM_WEIGHTS, VQGAN_WEIGHTS, ensure_all


def saved_pipeline_class(folder: Path) -> str:
    """The pipeline class a saved folder (or a finished run folder's model/) holds, from its model_index.json."""
    index = folder / "model_index.json"
    try:
        name = json.loads(index.read_text(encoding="utf-8")).get("_class_name")
    except (OSError, ValueError, AttributeError):
        name = None
    if not isinstance(name, str) or not name.endswith("Pipeline"):
        raise RefFaceError(
            f"The model folder {folder} has no readable model_index.json of a refface pipeline; write one with "
            "`refface convert` or `refface train`."
        )
    return name


def model_folder(folder: str | Path) -> Path:
    """`folder` itself, or the model/ a finished training run left in it."""
    source = Path(folder)
    if not (source / "model_index.json").is_file() and (source / "model" / "model_index.json").is_file():
        return source / "model"
    return source


def _load(pipeline_class: type, folder: str | Path, speedups: bool = True):
    source = model_folder(folder)
    name = saved_pipeline_class(source)
    if name != pipeline_class.__name__:
        raise RefFaceError(
            f"The model folder {source} holds a {name}, not a {pipeline_class.__name__} "
            f"({pipeline_class.default_options.method}); choose the matching --method."
        )
    try:
        pipe = pipeline_class.from_pretrained(source, speedups=speedups)
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as error:
        reason = short_reason(error)
        raise RefFaceError(f"The model folder {source} could not be loaded ({reason}).") from None
    for name, component in pipe.components.items():
        if isinstance(component, torch.nn.Module):
            check_finite(component, source / name)
    return pipe.eval_mode()


def load_saved(folder: str | Path) -> RefLDMPipeline:
    """A ReF-LDM pipeline written by `save_pretrained` (diffusers layout, safetensors)."""
    return _load(RefLDMPipeline, folder)


def load_composite(folder: str | Path, speedups: bool = True):
    """A Composite-Context model folder written by `refface train` (stage composite) or `save_pretrained`.

    The method has no public release, so there is nothing to download: a model comes from training, and
    one to train further is loaded with `speedups=False`.
    """
    from refface.pipelines.composite import CompositeContextPipeline

    return _load(CompositeContextPipeline, folder, speedups)


def load_refldm(
    model: str | Path | None = None,
    checkpoint: str | Path | None = None,
    vqgan: str | Path | None = None,
    config: str | Path | None = None,
) -> RefLDMPipeline:
    """Load from `model` (saved folder), else `checkpoint` (+ `vqgan`, `config`), else the released weights
    (downloaded into the cache on first use)."""
    if model is not None:
        return load_saved(model)
    if checkpoint is None:
        checkpoint, vqgan = ensure_all([REFLDM_WEIGHTS, VQGAN_WEIGHTS])
    return RefLDMPipeline.from_official(checkpoint, vqgan, config)
