"""The restorers `refface benchmark` runs: each method of `refface.methods` behind one small interface.

A method restores one aligned LQ face from a list of aligned references (possibly empty) and
describes its settings, so a results folder can refuse to mix outputs made with different ones.
The defaults are those of the official evaluation script (`scripts/inference_dataset.py`): 100 DDIM
steps on the "uniform" schedule, guidance 1.5 and the same starting noise (seed 2024) for every image.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from PIL import Image

from refface import methods
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
    """A method of `refface.methods` through its pipeline: one LQ face, its references (or none), the settings.

    The pipeline call's options are the method's `sampling_options` from `settings` (steps, guidance)
    and those of `spacing`, `lq_guidance` and `color_fix` that the method's `benchmark_options` name;
    a results folder records exactly these (and the seed), so it refuses to mix outputs made otherwise.
    """

    def __init__(
        self,
        method: methods.Method,
        pipe,
        settings: SamplingSettings,
        uses_references: bool = True,
        source: str = "",
        lq_guidance: float | None = None,
        color_fix: bool = True,
    ) -> None:
        self.method, self.pipe, self.settings = method, pipe, settings
        self.uses_references, self.source = uses_references, source
        given = {
            "spacing": settings.spacing,
            "lq_guidance": method.lq_guidance if lq_guidance is None else lq_guidance,
            "color_fix": color_fix,
        }
        self.options = {name: given[name] for name in method.benchmark_options}

    def sampling(self) -> dict:
        """The pipeline call's sampling options."""
        return self.method.sampling_options(self.settings.steps, self.settings.guidance, **self.options)

    def recorded(self) -> dict:
        """The settings a results folder records (and refuses to mix)."""
        settings = self.settings
        return {"steps": settings.steps, "guidance": settings.guidance, **self.options, "seed": settings.seed}

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

    def __init__(self, pipe, settings: SamplingSettings, uses_references: bool = True, source: str = "") -> None:
        super().__init__(methods.get("refldm"), pipe, settings, uses_references, source)


def build_restorer(
    method: str,
    settings: SamplingSettings,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    model: str | Path | None = None,
    checkpoint: str | Path | None = None,
    vqgan: str | Path | None = None,
    config: str | Path | None = None,
    lq_guidance: float | None = None,
    color_fix: bool = True,
) -> Restorer:
    """Benchmark method `method` (`refface.methods.benchmark_methods()`) with its weights.

    The weights are a saved folder, official files, or the released download; `lq_guidance` None is
    the method's default (it applies to the methods that have one).
    """
    entry, uses_references = methods.benchmark_method(method)
    pipe = entry.load(model, checkpoint, vqgan, config).to(device=device, dtype=dtype)
    given = model or checkpoint
    source = str(Path(given).resolve()) if given else f"released {entry.label} weights"  # the same folder however named
    return PipelineRestorer(entry, pipe, settings, uses_references, source, lq_guidance, color_fix)
