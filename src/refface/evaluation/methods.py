"""The restoration methods `refface benchmark` can run, behind one small interface.

A method restores one aligned LQ face from a list of aligned references (possibly empty) and
describes its settings, so a results folder can refuse to mix outputs made with different ones.
The defaults are those of the official evaluation script (`scripts/inference_dataset.py`): 100 DDIM
steps on the "uniform" schedule, guidance 1.5 and the same starting noise (seed 2024) for every image.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import torch
from PIL import Image

from refface.errors import RefFaceError


@dataclass(frozen=True)
class SamplingSettings:
    steps: int = 100
    guidance: float = 1.5
    spacing: str = "uniform"
    seed: int = 2024

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise RefFaceError(f"The number of sampling steps must be at least 1, got {self.steps}.")
        if self.spacing not in ("uniform", "uniform_trailing"):
            raise RefFaceError(f"The timestep spacing must be uniform or uniform_trailing, not {self.spacing!r}.")


class Restorer(Protocol):
    """One method, ready to run: `restore(lq, references)` gives the restored face at the model's size."""

    uses_references: bool

    def restore(self, lq: Image.Image, references: list[Image.Image]) -> Image.Image: ...

    def describe(self) -> dict: ...


class PipelineRestorer:
    """What both methods' restorers share: one LQ face, its references (or none), the recorded settings."""

    def __init__(self, pipe, settings: SamplingSettings, uses_references: bool = True, source: str = "") -> None:
        self.pipe, self.settings, self.uses_references, self.source = pipe, settings, uses_references, source

    def sampling(self) -> dict:
        """The pipeline call's sampling options."""
        raise NotImplementedError

    def recorded(self) -> dict:
        """The settings a results folder records (and refuses to mix)."""
        raise NotImplementedError

    def restore(self, lq: Image.Image, references: list[Image.Image]) -> Image.Image:
        refs = references if self.uses_references and references else None
        return self.pipe([lq], refs, seed=self.settings.seed, progress=False, **self.sampling()).images[0]

    def describe(self) -> dict:
        return {
            "model": self.source,
            "references": self.uses_references,
            "dtype": str(self.pipe.unet.dtype).removeprefix("torch."),
            **self.recorded(),
        }


class RefLDMRestorer(PipelineRestorer):
    """ReF-LDM through `RefLDMPipeline`; with `uses_references` False the references are ignored (no guidance)."""

    def sampling(self) -> dict:
        settings = self.settings
        return {"num_inference_steps": settings.steps, "guidance_scale": settings.guidance, "spacing": settings.spacing}

    def recorded(self) -> dict:
        return asdict(self.settings)


class CompositeRestorer(PipelineRestorer):
    """The Composite-Context method through `CompositeContextPipeline` (dual guidance, multi-reference ensemble).

    `settings.guidance` is s_c (toward the references) and `lq_guidance` is s_i; the timestep spacing is
    the model's own scheduler's, so `settings.spacing` does not apply and is not recorded.
    """

    def __init__(
        self,
        pipe,
        settings: SamplingSettings,
        lq_guidance: float = 1.2,
        color_fix: bool = True,
        uses_references: bool = True,
        source: str = "",
    ) -> None:
        super().__init__(pipe, settings, uses_references, source)
        self.lq_guidance, self.color_fix = lq_guidance, color_fix

    def sampling(self) -> dict:
        return {
            "num_inference_steps": self.settings.steps,
            "lq_guidance": self.lq_guidance,
            "reference_guidance": self.settings.guidance,
            "color_fix": self.color_fix,
        }

    def recorded(self) -> dict:
        settings = self.settings
        return {"steps": settings.steps, "guidance": settings.guidance, "lq_guidance": self.lq_guidance,
                "color_fix": self.color_fix, "seed": settings.seed}  # fmt: skip


METHODS = {
    "refldm": "ReF-LDM with the references (CacheKV, guidance toward them)",
    "refldm-no-refs": "ReF-LDM given no references (the same weights, no guidance)",
    "composite": "Composite-Context with the references (dual guidance, training-free multi-reference ensemble)",
    "composite-no-refs": "Composite-Context given no references (guidance toward the LQ image only)",
}


def method_family(method: str) -> str:
    """refldm or composite: which model a method name runs."""
    return "composite" if method.startswith("composite") else "refldm"


def build_restorer(
    method: str,
    settings: SamplingSettings,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    model: str | Path | None = None,
    checkpoint: str | Path | None = None,
    vqgan: str | Path | None = None,
    config: str | Path | None = None,
    lq_guidance: float = 1.2,
    color_fix: bool = True,
) -> Restorer:
    """Method `method` with its weights (a saved folder, official files, or the released download)."""
    if method not in METHODS:
        raise RefFaceError(f"Unknown method {method!r}; choose one of {', '.join(METHODS)}.")
    if method_family(method) == "composite":
        from refface.pipelines.loading import load_composite

        check_composite_sources(model, checkpoint, vqgan, config)
        pipe = load_composite(model).to(device=device, dtype=dtype)
        source = str(Path(model).resolve())
        uses = method == "composite"
        return CompositeRestorer(pipe, settings, lq_guidance, color_fix, uses_references=uses, source=source)
    from refface.pipelines.loading import load_refldm

    pipe = load_refldm(model=model, checkpoint=checkpoint, vqgan=vqgan, config=config).to(device=device, dtype=dtype)
    given = model or checkpoint
    source = str(Path(given).resolve()) if given else "released ReF-LDM weights"  # the same folder however named
    return RefLDMRestorer(pipe, settings, uses_references=method == "refldm", source=source)


def check_composite_sources(model, checkpoint, vqgan, config) -> None:
    """The Composite-Context method loads from a trained model folder only (it has no released checkpoint)."""
    if checkpoint is not None or vqgan is not None or config is not None:
        raise RefFaceError(
            "--checkpoint, --vqgan and --config are ReF-LDM's official files; the Composite-Context method loads "
            "a model folder with --model."
        )
    if model is None:
        raise RefFaceError(
            "The Composite-Context method has no released weights; pass --model with a folder that "
            "`refface train` (stage composite) wrote."
        )
