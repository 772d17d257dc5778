"""The restorers `refface benchmark` runs: each method of `refface.methods` behind one small interface.

A restorer restores one aligned LQ face from a list of aligned references (possibly empty) and describes its
settings, so a results folder can refuse to mix outputs made with different ones. The benchmark's sampling
defaults are each method's paper's (`Method.benchmark`: ReF-LDM's official evaluation script runs 100 DDIM
steps on the "uniform" schedule, the Composite-Context paper 50), with the method's guidance and the same
starting noise (seed 2024) for every image.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from refface import methods
from refface.pipelines.base import SamplingOptions

if TYPE_CHECKING:
    import torch
    from PIL import Image

BENCHMARK_SPACING = "uniform"


class Restorer(Protocol):
    """One method, ready to run: `restore(lq, references)` gives the restored face at the model's size."""

    uses_references: bool

    def restore(self, lq: Image.Image, references: list[Image.Image]) -> Image.Image: ...

    def describe(self) -> dict: ...


def benchmark_sampling(
    method: methods.Method,
    steps: int | None = None,
    guidance: float | None = None,
    spacing: str = BENCHMARK_SPACING,
    seed: int | None = None,
    lq_guidance: float | None = None,
    color_fix: bool | None = None,
    context: str | None = None,
    fidelity: float | None = None,
) -> SamplingOptions:
    """The options a benchmark of `method` samples with: its paper's steps unless given, the official evaluation's
    spacing (where the method has one), the method's guidance unless given, and `lq_guidance` / `color_fix` /
    `context` / `fidelity` for the methods that have them (given to another, one sentence)."""
    has_spacing = "spacing" in method.benchmark_options
    steps = method.benchmark.steps if steps is None else steps
    return method.sampling(
        steps=steps, guidance=guidance, spacing=spacing if has_spacing else None, seed=seed,
        lq_guidance=lq_guidance, color_fix=color_fix, context=context, fidelity=fidelity,
    )  # fmt: skip


class PipelineRestorer:
    """A method of `refface.methods` through its pipeline: one LQ face, its references (or none), the options.

    A results folder records the steps, guidance, seed and those options the method's `benchmark_options`
    name, so it refuses to mix outputs made otherwise.
    """

    def __init__(
        self,
        method: methods.Method,
        pipe,
        options: SamplingOptions,
        uses_references: bool = True,
        source: str = "",
    ) -> None:
        self.method, self.pipe, self.options = method, pipe, options
        self.uses_references, self.source = uses_references, source

    def recorded(self) -> dict:
        """The settings a results folder records (and refuses to mix)."""
        options = self.options.recorded()  # what a manifest records (the whole reference context goes unsaid)
        chosen = {name: options[name] for name in self.method.benchmark_options if name in options}
        recorded = {"steps": options["steps"], "guidance": options["guidance"], **chosen, "seed": options["seed"]}
        return {name: value for name, value in recorded.items() if value is not None}  # a blind restorer: no steps

    def restore(self, lq: Image.Image, references: list[Image.Image]) -> Image.Image:
        refs = references if self.uses_references and references else None
        return self.pipe([lq], refs, options=self.options, progress=False).images[0]

    def describe(self) -> dict:
        return {
            "model": self.source,
            "references": self.uses_references,
            "dtype": str(self.pipe.dtype).removeprefix("torch."),
            **self.recorded(),
        }


def build_restorer(
    method: str,
    options: SamplingOptions | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    sources: methods.ModelSources | None = None,
) -> Restorer:
    """Benchmark method `method` (`refface.methods.benchmark_methods()`) with its weights (checked `sources`;
    (default the released ones) and `options` (default `benchmark_sampling`'s); `dtype` None keeps the weights'."""
    entry, uses_references = methods.benchmark_method(method)
    sources = sources if sources is not None else entry.sources()
    pipe = entry.load(sources).to(device=device, dtype=dtype)
    given = sources.model or sources.checkpoint
    source = str(given.resolve()) if given else f"released {entry.label} weights"  # the same folder however named
    options = options if options is not None else benchmark_sampling(entry)
    return PipelineRestorer(entry, pipe, options, uses_references, source)
