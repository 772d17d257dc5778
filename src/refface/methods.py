"""The restoration methods, in the one table that the CLI, the web page, the ComfyUI nodes and the benchmark read.

Each `Method` names a method (its `--method` value; its label is its options'), its pipeline class (imported on
first use: the Composite-Context pipeline imports transformers), where its weights come from (a saved folder,
official files, the release) and the check of that choice, its default `SamplingOptions` (written once, in
`refface.pipelines.base`) and the options its benchmark runs set and record. A new method is one entry in
`METHODS` plus its pipeline (a class in `refface.pipelines` that keeps `RestorationPipeline`'s contract).

The blind restorers the papers compare against (CodeFormer, GFPGAN v1.4, RestoreFormer++) are methods too, whose
`uses_references` is False: they restore a face from itself, in `refface restore`, in a benchmark's table and for
the faces that match nobody (`--unknown blind`).

Layering: this module imports the pipelines' light `base` module, and the rest of the pipelines inside
functions; `refface.models` and `refface.pipelines` never import it; the workflow, evaluation and the front
ends do.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from refface.errors import RefFaceError
from refface.pipelines.base import (
    CODEFORMER_OPTIONS,
    COMPOSITE_OPTIONS,
    FAST_STEPS,
    GFPGAN_OPTIONS,
    REFLDM_OPTIONS,
    RESTOREFORMER_PP_OPTIONS,
    SamplingOptions,
)

NO_REFERENCES = "-no-refs"  # benchmark method `<name>-no-refs`: the same model given no references


@dataclass(frozen=True)
class ModelSources:
    """Where a method's weights come from: a saved `model` folder, official files (`checkpoint`, `vqgan`,
    `config`), or nothing (the released weights). Made by `Method.sources`, which checks the combination once."""

    model: Path | None = None
    checkpoint: Path | None = None
    vqgan: Path | None = None
    config: Path | None = None

    @property
    def released(self) -> bool:
        return self.model is None and self.checkpoint is None

    def recorded(self) -> list[str | None]:
        """The files as a run's manifest records them (absolute, so the same files however they were named)."""
        return [str(path.resolve()) if path is not None else None for path in self._paths()]

    def _paths(self) -> tuple[Path | None, ...]:
        return self.model, self.checkpoint, self.vqgan, self.config


def _any_official_files(sources: ModelSources) -> None:
    """ReF-LDM: a saved folder alone, or an official checkpoint with its optional VQGAN and config, or nothing."""
    if sources.model is not None and (
        sources.checkpoint is not None or sources.vqgan is not None or sources.config is not None
    ):
        raise RefFaceError("--model already holds every weight; do not combine it with --checkpoint/--vqgan/--config.")
    if sources.checkpoint is None and (sources.vqgan is not None or sources.config is not None):
        raise RefFaceError("--vqgan and --config describe an official checkpoint; pass it with --checkpoint.")


def _trained_folder_only(sources: ModelSources) -> None:
    """The Composite-Context method loads from a trained model folder only (it has no released checkpoint)."""
    if sources.checkpoint is not None or sources.vqgan is not None or sources.config is not None:
        raise RefFaceError(
            "--checkpoint, --vqgan and --config are ReF-LDM's official files; the Composite-Context method loads "
            "a model folder with --model."
        )
    if sources.model is None:
        raise RefFaceError(
            "The Composite-Context method has no released weights; pass --model with a folder that "
            "`refface train` (stage composite) wrote."
        )


def _weight_file_only(sources: ModelSources) -> None:
    """A blind restorer loads one weights file, given with --checkpoint (or its release, downloaded)."""
    if sources.model is not None or sources.vqgan is not None or sources.config is not None:
        raise RefFaceError(
            "A blind restorer loads one weights file: pass it with --checkpoint (--model, --vqgan and --config are "
            "the diffusion methods')."
        )
    if sources.checkpoint is not None and not sources.checkpoint.is_file():
        raise RefFaceError(f"The weights file {sources.checkpoint} does not exist.")


@dataclass(frozen=True)
class BenchmarkDefaults:
    """How a method's paper evaluates it, which `refface benchmark` follows unless told otherwise: sampling steps,
    the references of the main table, and the reference counts of the multi-reference study (None, 0 and () for
    a blind restorer: one pass, no references)."""

    steps: int | None
    references: int
    sweep: tuple[int, ...]


BLIND_BENCHMARK = BenchmarkDefaults(steps=None, references=0, sweep=())


@dataclass(frozen=True)
class Method:
    """One restoration method: its name, pipeline, weights, default sampling options and benchmark options.

    `loader(sources)` returns the pipeline in eval mode from checked `ModelSources`; `check_sources(sources)`
    refuses a combination of weight files the method cannot load, in one sentence.
    """

    name: str  # the --method value and the web form's
    pipeline: str  # "module:Class", imported on first use
    loader: Callable[[ModelSources], Any]
    defaults: SamplingOptions
    summary: str  # where the weights come from, for --method's help
    with_references: str  # the benchmark's description of `name` ...
    without_references: str  # ... and of `name`-no-refs
    benchmark: BenchmarkDefaults
    benchmark_options: tuple[str, ...] = ()  # of spacing, lq_guidance, color_fix, context, fidelity: recorded
    check_sources: Callable[[ModelSources], None] = _any_official_files
    uses_references: bool = True  # False: a blind restorer (references are not used)

    @property
    def label(self) -> str:
        """What pages, help and messages call the method."""
        return self.defaults.method

    @property
    def fast_steps(self) -> int | None:
        """The steps of the fast mode (DPM-Solver++); None for a method that samples with its own scheduler."""
        return FAST_STEPS if self.defaults.solver is not None else None

    @property
    def pipeline_class_name(self) -> str:
        """The `_class_name` a saved folder of this method has in its model_index.json."""
        return self.pipeline.partition(":")[2]

    def pipeline_class(self) -> type:
        module, _, name = self.pipeline.partition(":")
        return getattr(importlib.import_module(module), name)

    def sources(
        self,
        model: str | Path | None = None,
        checkpoint: str | Path | None = None,
        vqgan: str | Path | None = None,
        config: str | Path | None = None,
    ) -> ModelSources:
        """The weight files given for this method, checked once (before any slow work): a saved model folder must
        hold this method's model."""
        as_path = [Path(value) if value is not None and str(value) != "" else None for value in (model, checkpoint,
                                                                                                 vqgan, config)]
        sources = ModelSources(*as_path)
        self.check_sources(sources)
        if sources.model is not None and sources.model.is_dir():
            held, _ = of_folder(sources.model)
            if held is not self:
                raise RefFaceError(
                    f"The model folder {sources.model} holds a {held.label} model, not a {self.label} one; choose the "
                    "matching --method."
                )
        return sources

    def load(self, sources: ModelSources | None = None):
        """The pipeline (eval mode) from `sources` (default: the released weights)."""
        return self.loader(sources if sources is not None else self.sources())

    def sampling(
        self,
        *,
        steps: int | None = None,
        guidance: float | None = None,
        lq_guidance: float | None = None,
        color_fix: bool | None = None,
        spacing: str | None = None,
        solver: str | None = None,
        strength: float | None = None,
        seed: int | None = None,
        context: str | None = None,
        fidelity: float | None = None,
    ) -> SamplingOptions:
        """This method's options with the user's changes (None: the default); an option the method does not have
        is one sentence. DPM-Solver++ without a step count takes the fast mode's steps."""
        if steps is None and solver == "dpm++" and self.fast_steps is not None:
            steps = self.fast_steps
        return self.defaults.with_changes(
            steps=steps, guidance=guidance, lq_guidance=lq_guidance, color_fix=color_fix, spacing=spacing,
            solver=solver, strength=strength, seed=seed, context=context, fidelity=fidelity,
        )  # fmt: skip


# ------------------------------------------------------------------------------------------- loaders
def _refldm_load(sources: ModelSources):
    from refface.pipelines.loading import load_refldm

    return load_refldm(sources.model, sources.checkpoint, sources.vqgan, sources.config)


def _composite_load(sources: ModelSources):
    from refface.pipelines.loading import load_composite

    return load_composite(sources.model)


def _blind_loader(name: str) -> Callable[[ModelSources], Any]:
    def load(sources: ModelSources):
        from refface.pipelines.blind import load_blind

        return load_blind(name, sources.checkpoint)

    return load


def _blind(name: str, defaults: SamplingOptions, summary: str, options: tuple[str, ...] = ()) -> Method:
    """A blind restorer's entry: one pass over the crop, no references, its release or a --checkpoint file."""
    return Method(
        name=name,
        pipeline="refface.pipelines.blind:BlindRestorationPipeline",
        loader=_blind_loader(name),
        defaults=defaults,
        summary=summary,
        with_references="blind: restores from the face alone",
        without_references="blind: restores from the face alone",
        benchmark=BLIND_BENCHMARK,
        benchmark_options=options,
        check_sources=_weight_file_only,
        uses_references=False,
    )


# ------------------------------------------------------------------------------------------- the table
METHODS: tuple[Method, ...] = (
    Method(
        name="refldm",
        pipeline="refface.pipelines.refldm:RefLDMPipeline",
        loader=_refldm_load,
        defaults=REFLDM_OPTIONS,
        summary="released weights",
        with_references="CacheKV, guidance toward them",
        without_references="the same weights, no guidance",
        # the official evaluation script's 100 DDIM steps, 5 references, and the paper's 1/3/5/8 study
        benchmark=BenchmarkDefaults(steps=100, references=5, sweep=(1, 3, 5, 8)),
        benchmark_options=("spacing",),
    ),
    Method(
        name="composite",
        pipeline="refface.pipelines.composite:CompositeContextPipeline",
        loader=_composite_load,
        defaults=COMPOSITE_OPTIONS,
        summary="Composite-Context, a model folder you trained",
        with_references="dual guidance, training-free multi-reference ensemble",
        without_references="guidance toward the LQ image only",
        # its paper's 50 DDIM steps, one reference in the main tables, and its 1-5 reference study
        benchmark=BenchmarkDefaults(steps=50, references=1, sweep=(1, 2, 3, 4, 5)),
        check_sources=_trained_folder_only,
        benchmark_options=("lq_guidance", "color_fix", "context"),  # the timestep spacing is its own scheduler's
    ),
    _blind("codeformer", CODEFORMER_OPTIONS, "blind baseline, no references; non-commercial licence", ("fidelity",)),
    _blind("gfpgan", GFPGAN_OPTIONS, "blind baseline, no references"),
    _blind("restoreformer++", RESTOREFORMER_PP_OPTIONS, "blind baseline, no references"),
)
DEFAULT = "refldm"  # what `refface restore` and `refface serve` run when not told
DEFAULT_BLIND = "gfpgan"  # what `--unknown blind` restores with when not told (Apache-licensed)


def names() -> tuple[str, ...]:
    return tuple(method.name for method in METHODS)


def blind_names() -> tuple[str, ...]:
    """The blind restorers, for `--unknown blind`."""
    return tuple(method.name for method in METHODS if not method.uses_references)


def get_blind(name: str) -> Method:
    """The blind restorer called `name`; another name is one sentence listing them."""
    if name not in blind_names():
        raise RefFaceError(f"{name!r} is not a blind restorer; choose one of {', '.join(blind_names())}.")
    return get(name)


def get(name: str) -> Method:
    """The method called `name`; an unknown name is one sentence listing the known ones."""
    for method in METHODS:
        if method.name == name:
            return method
    raise RefFaceError(f"Unknown method {name!r}; choose one of {', '.join(names())}.")


def of_folder(folder: str | Path) -> tuple[Method, Path]:
    """The method of a saved model folder (or a finished run folder's model/), read from the folder, and the
    folder to load (`method.load(method.sources(model=...))`)."""
    from refface.pipelines.loading import model_folder, saved_pipeline_class

    source = model_folder(folder)
    return for_pipeline(saved_pipeline_class(source)), source


def for_pipeline(class_name: str) -> Method:
    """The method whose pipeline class is called `class_name` (a saved folder's model_index.json); blind restorers
    have no saved folders."""
    for method in METHODS:
        if method.uses_references and method.pipeline_class_name == class_name:
            return method
    raise RefFaceError(f"No restoration method runs a {class_name}; the methods are {', '.join(names())}.")


def benchmark_methods() -> dict[str, str]:
    """`refface benchmark`'s method names (each method with and without references) and their descriptions."""
    described = {}
    for method in METHODS:
        if not method.uses_references:
            described[method.name] = f"{method.label}, {method.with_references}"
            continue
        described[method.name] = f"{method.label} with the references ({method.with_references})"
        described[method.name + NO_REFERENCES] = f"{method.label} given no references ({method.without_references})"
    return described


def benchmark_method(name: str) -> tuple[Method, bool]:
    """The method a benchmark name runs, and whether it is given the references."""
    for method in METHODS:
        if name == method.name or (method.uses_references and name == method.name + NO_REFERENCES):
            return method, method.uses_references and name == method.name
    raise RefFaceError(f"Unknown method {name!r}; choose one of {', '.join(benchmark_methods())}.")
