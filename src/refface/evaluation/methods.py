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


class RefLDMRestorer:
    """ReF-LDM through `RefLDMPipeline`; with `uses_references` False the references are ignored (no guidance)."""

    def __init__(self, pipe, settings: SamplingSettings, uses_references: bool = True, source: str = "") -> None:
        self.pipe, self.settings, self.uses_references, self.source = pipe, settings, uses_references, source

    def restore(self, lq: Image.Image, references: list[Image.Image]) -> Image.Image:
        result = self.pipe(
            [lq],
            references if self.uses_references and references else None,
            num_inference_steps=self.settings.steps,
            guidance_scale=self.settings.guidance,
            seed=self.settings.seed,
            spacing=self.settings.spacing,
            progress=False,
        )
        return result.images[0]

    def describe(self) -> dict:
        return {
            "model": self.source,
            "references": self.uses_references,
            "dtype": str(self.pipe.unet.dtype).removeprefix("torch."),
            **asdict(self.settings),
        }


METHODS = {
    "refldm": "ReF-LDM with the references (CacheKV, guidance toward them)",
    "refldm-no-refs": "ReF-LDM given no references (the same weights, no guidance)",
}


def build_restorer(
    method: str,
    settings: SamplingSettings,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    model: str | Path | None = None,
    checkpoint: str | Path | None = None,
    vqgan: str | Path | None = None,
    config: str | Path | None = None,
) -> Restorer:
    """Method `method` with its weights (a saved folder, official files, or the released download)."""
    if method not in METHODS:
        raise RefFaceError(f"Unknown method {method!r}; choose one of {', '.join(METHODS)}.")
    from refface.pipelines.loading import load_refldm

    pipe = load_refldm(model=model, checkpoint=checkpoint, vqgan=vqgan, config=config).to(device=device, dtype=dtype)
    given = model or checkpoint
    source = str(Path(given).resolve()) if given else "released ReF-LDM weights"  # the same folder however named
    return RefLDMRestorer(pipe, settings, uses_references=method == "refldm", source=source)
