"""The restoration methods, in one table that the CLI, the web page, the benchmark and their tests read.

Each `Method` names a method (its `--method` value and human label), its pipeline class (imported on
first use: the Composite-Context pipeline imports transformers), where its weights come from (a saved
folder, official files, the release), its default sampling options with the check that turns them into
its pipeline's keyword arguments, and the options its benchmark runs set and record (the restorer itself,
one for every method, is `refface.evaluation.methods.PipelineRestorer`). A new method is one entry in
`METHODS` plus its pipeline (a class in `refface.pipelines`, listed in `refface.pipelines.loading.PIPELINES`
so that its saved folders are recognised).

Layering: this module imports the pipelines (inside functions) and nothing above them; `refface.models`
and `refface.pipelines` never import it, and evaluation, the CLI and the web service do.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from refface.errors import RefFaceError
from refface.pipelines.schedule import FAST_STEPS

NO_REFERENCES = "-no-refs"  # benchmark method `<name>-no-refs`: the same model given no references


def _any_sources(model, checkpoint, vqgan, config) -> None:
    """Every combination of weight sources is the loader's to judge."""


@dataclass(frozen=True)
class Method:
    """One restoration method: its names, pipeline, weights, sampling defaults and benchmark options.

    `loader(model, checkpoint, vqgan, config)` returns the pipeline in eval mode; `options(steps=,
    guidance=, lq_guidance=, color_fix=, spacing=, solver=, strength=)` receives the options with this entry's
    defaults filled in and returns the pipeline call's keyword arguments, refusing an option the
    method does not have in one sentence. A default of None means the method has no such option.
    """

    name: str  # the --method value and the web form's
    label: str  # what pages, help and messages call it
    pipeline: str  # "module:Class", imported on first use
    loader: Callable[..., Any]
    options: Callable[..., dict]
    summary: str  # where the weights come from, for --method's help
    with_references: str  # the benchmark's description of `name` ...
    without_references: str  # ... and of `name`-no-refs
    guidance: float  # toward the references
    lq_guidance: float | None = None  # toward the LQ image
    spacing: str | None = None  # timestep spacing
    solver: str | None = None
    steps: int = 50
    fast_steps: int | None = None  # the steps of the fast mode (DPM-Solver++); None: no fast mode
    benchmark_options: tuple[str, ...] = ()  # of spacing, lq_guidance, color_fix: what a benchmark sets and records
    check_sources: Callable[..., None] = _any_sources  # (model, checkpoint, vqgan, config), before slow work

    @property
    def pipeline_class_name(self) -> str:
        """The `_class_name` a saved folder of this method has in its model_index.json."""
        return self.pipeline.partition(":")[2]

    def pipeline_class(self) -> type:
        module, _, name = self.pipeline.partition(":")
        return getattr(importlib.import_module(module), name)

    def load(self, model=None, checkpoint=None, vqgan=None, config=None):
        """The pipeline from a saved folder (`model`), official files (`checkpoint`, ...) or the release."""
        self.check_sources(model, checkpoint, vqgan, config)
        return self.loader(model, checkpoint, vqgan, config)

    def sampling_options(
        self,
        steps: int | None = None,
        guidance: float | None = None,
        lq_guidance: float | None = None,
        color_fix: bool = True,
        spacing: str | None = None,
        solver: str | None = None,
        strength: float = 1.0,
    ) -> dict:
        """Keyword arguments for this method's pipeline call; an option of another method is one sentence."""
        from refface.pipelines.schedule import check_strength

        steps = self.steps if steps is None else steps
        if steps < 1:
            raise RefFaceError(f"The number of steps must be at least 1, got {steps}.")
        check_strength(strength)
        return self.options(
            steps=steps,
            guidance=self.guidance if guidance is None else guidance,
            lq_guidance=self.lq_guidance if lq_guidance is None else lq_guidance,
            color_fix=color_fix,
            spacing=self.spacing if spacing is None else spacing,
            solver=self.solver if solver is None else solver,
            strength=strength,
        )


def _light_touch(strength: float) -> dict:
    """`strength` for a pipeline call below 1 only: 1 is the pipelines' default, and settings recorded without
    it (benchmarks, archive runs) stay the same."""
    return {"strength": strength} if strength != 1.0 else {}


# ------------------------------------------------------------------------------------------- ReF-LDM
def _refldm_load(model, checkpoint, vqgan, config):
    from refface.pipelines.loading import load_refldm

    return load_refldm(model=model, checkpoint=checkpoint, vqgan=vqgan, config=config)


def _refldm_options(*, steps, guidance, lq_guidance, color_fix, spacing, solver, strength) -> dict:
    from refface.pipelines.schedule import check_solver

    check_solver(solver)
    if lq_guidance is not None or not color_fix:
        raise RefFaceError(
            "The LQ guidance (--lq-guidance) and turning the colour fix off (--no-color-fix) "
            "apply to the composite method only."
        )
    return {
        "num_inference_steps": steps,
        "guidance_scale": guidance,
        "spacing": spacing,
        "solver": solver,
        **_light_touch(strength),
    }


# --------------------------------------------------------------------------------- Composite-Context
def _trained_folder_only(model, checkpoint, vqgan, config) -> None:
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


def _composite_load(model, checkpoint, vqgan, config):
    from refface.pipelines.loading import load_composite

    return load_composite(model)


def _composite_options(*, steps, guidance, lq_guidance, color_fix, spacing, solver, strength) -> dict:
    if spacing is not None or solver is not None:
        raise RefFaceError(
            "The timestep schedule and solver (--schedule, --solver, --fast) apply to ReF-LDM; "
            "the composite model samples with its own scheduler."
        )
    return {
        "num_inference_steps": steps,
        "lq_guidance": lq_guidance,
        "reference_guidance": guidance,
        "color_fix": color_fix,
        **_light_touch(strength),
    }


# ------------------------------------------------------------------------------------------- the table
METHODS: tuple[Method, ...] = (
    Method(
        name="refldm",
        label="ReF-LDM",
        pipeline="refface.pipelines.refldm:RefLDMPipeline",
        loader=_refldm_load,
        options=_refldm_options,
        summary="released weights",
        with_references="CacheKV, guidance toward them",
        without_references="the same weights, no guidance",
        guidance=1.5,
        spacing="uniform_trailing",
        solver="ddim",
        fast_steps=FAST_STEPS,
        benchmark_options=("spacing",),
    ),
    Method(
        name="composite",
        label="Composite-Context",
        pipeline="refface.pipelines.composite:CompositeContextPipeline",
        loader=_composite_load,
        options=_composite_options,
        summary="Composite-Context, a model folder you trained",
        with_references="dual guidance, training-free multi-reference ensemble",
        without_references="guidance toward the LQ image only",
        guidance=1.2,
        lq_guidance=1.2,
        check_sources=_trained_folder_only,
        benchmark_options=("lq_guidance", "color_fix"),  # the timestep spacing is its own scheduler's
    ),
)
DEFAULT = "refldm"  # what `refface restore` and `refface serve` run when not told


def names() -> tuple[str, ...]:
    return tuple(method.name for method in METHODS)


def get(name: str) -> Method:
    """The method called `name`; an unknown name is one sentence listing the known ones."""
    for method in METHODS:
        if method.name == name:
            return method
    raise RefFaceError(f"Unknown method {name!r}; choose one of {', '.join(names())}.")


def of_folder(folder: str | Path) -> tuple[Method, Path]:
    """The method of a saved model folder (or a finished run folder's model/), read from the folder, and the
    folder to load (`method.load(model=...)`)."""
    from refface.pipelines.loading import model_folder, saved_pipeline_class

    source = model_folder(folder)
    return for_pipeline(saved_pipeline_class(source)), source


def for_pipeline(class_name: str) -> Method:
    """The method whose pipeline class is called `class_name` (a saved folder's model_index.json)."""
    for method in METHODS:
        if method.pipeline_class_name == class_name:
            return method
    raise RefFaceError(f"No restoration method runs a {class_name}; the methods are {', '.join(names())}.")


def benchmark_methods() -> dict[str, str]:
    """`refface benchmark`'s method names (each method with and without references) and their descriptions."""
    described = {}
    for method in METHODS:
        described[method.name] = f"{method.label} with the references ({method.with_references})"
        described[method.name + NO_REFERENCES] = f"{method.label} given no references ({method.without_references})"
    return described


def benchmark_method(name: str) -> tuple[Method, bool]:
    """The method a benchmark name runs, and whether it is given the references."""
    for method in METHODS:
        if name in (method.name, method.name + NO_REFERENCES):
            return method, name == method.name
    raise RefFaceError(f"Unknown method {name!r}; choose one of {', '.join(benchmark_methods())}.")
