"""The contract every restoration pipeline keeps, and the sampling options every front end fills in.

A front end (the CLI, the web page, the ComfyUI nodes, the benchmark) never calls a method's pipeline with
loose keywords: it asks the method registry (the package's `methods` module) for the method's `SamplingOptions`, changed
where the user said so. The options check themselves once, when they are made, so nothing downstream checks
a step count, a solver or a seed again. Each method's defaults are written once, below, and its pipeline
samples with them when it is told nothing.

This module imports neither torch nor diffusers: command-line help and argument errors read it.
"""

from __future__ import annotations

import dataclasses
import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from refface.errors import RefFaceError

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from refface.pipelines.sampler import StepCallback

# Official name -> (diffusers timestep_spacing, steps_offset). "uniform" is CompVis'
# range(0, T, T // n) + 1; "uniform_trailing" ends on T - 1 (for 50 steps: 19, 39, ..., 999).
SPACINGS = {"uniform_trailing": ("trailing", 0), "uniform": ("leading", 1)}
SOLVERS = ("ddim", "dpm++")
FAST_STEPS = 20  # DPM-Solver++ steps of ReF-LDM's fast mode
MAX_STEPS = 1000  # both methods are trained on 1000 timesteps: a sampler takes at most one step for each
SEED_MAX = 2**64 - 1  # torch.Generator.manual_seed takes 0 .. 2^64 - 1

# What each option is called in a sentence that refuses it to a method without it.
_OPTION_WORDS = {
    "steps": "the number of steps",
    "guidance": "the guidance toward the references",
    "strength": "the strength",
    "fidelity": "the fidelity weight",
    "lq_guidance": "the guidance toward the LQ image",
    "color_fix": "the colour fix",
    "spacing": "the timestep spacing",
    "solver": "the solver",
    "context": "the reference context",
}
# Composite-Context's reference context: both parts, or one alone (its paper's Table 5: the ArcFace token only,
# the FaRL tokens only); training drops each part independently, so the model knows each alone.
# Each context name: whether the identity (ArcFace) token and the facial (FaRL) tokens guide.
CONTEXT_PARTS = {"both": (True, True), "identity": (True, False), "appearance": (False, True)}
CONTEXTS = tuple(CONTEXT_PARTS)


def _whole(value: object) -> int | None:
    """`value` as an int when it is a whole number (numpy's included), else None."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def check_seed(seed: object) -> int:
    """`seed` as a noise seed (a whole number from 0 to 2^64 - 1), or one sentence."""
    value = _whole(seed)
    if value is None or not 0 <= value <= SEED_MAX:
        raise RefFaceError(f"The seed must be a whole number from 0 to {SEED_MAX}, got {seed!r}.")
    return value


def _finite(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RefFaceError(f"The {what} must be a finite number, got {value!r}.")
    return float(value)


@dataclass(frozen=True)
class SamplingOptions:
    """How one restoration samples: checked when made, so every later reader can trust it.

    `method` is the label of the method the options belong to. An option the method does not have is None
    (ReF-LDM has no LQ guidance or colour fix; Composite-Context samples with its own scheduler, so it has no
    spacing or solver; a blind restorer has no steps, guidance or strength), and `with_changes` refuses to set
    it. `guidance` is the guidance toward the references. `strength` below 1 starts from the input noised part
    way (SDEdit). `seed` is the noise seed of every image that is not given its own. `context` is which part of
    Composite-Context's reference context guides (`CONTEXTS`). `fidelity` is CodeFormer's weight w (0: the
    codebook's face, 1: closer to the input).
    """

    method: str
    steps: int | None
    guidance: float | None
    lq_guidance: float | None = None
    color_fix: bool | None = None
    context: str | None = None
    spacing: str | None = None
    solver: str | None = None
    strength: float | None = 1.0
    seed: int = 2024
    fidelity: float | None = None

    def __post_init__(self) -> None:
        if self.steps is not None:
            steps = _whole(self.steps)
            if steps is None or steps < 1:
                raise RefFaceError(f"The number of steps must be a whole number of at least 1, got {self.steps!r}.")
            if steps > MAX_STEPS:
                raise RefFaceError(f"The number of steps must be between 1 and {MAX_STEPS}, got {steps}.")
            object.__setattr__(self, "steps", steps)
        if self.guidance is not None:
            _finite(self.guidance, "guidance")
        if self.fidelity is not None and not 0.0 <= _finite(self.fidelity, "fidelity weight") <= 1.0:
            raise RefFaceError(f"The fidelity weight must be between 0 and 1, got {self.fidelity!r}.")
        if self.lq_guidance is not None:
            _finite(self.lq_guidance, "LQ guidance")
        if self.spacing is not None and self.spacing not in SPACINGS:
            raise RefFaceError(f"Unknown timestep spacing '{self.spacing}'; choose one of {', '.join(SPACINGS)}.")
        if self.context is not None and self.context not in CONTEXTS:
            raise RefFaceError(f"Unknown reference context '{self.context}'; choose one of {', '.join(CONTEXTS)}.")
        if self.solver is not None and self.solver not in SOLVERS:
            raise RefFaceError(f"Unknown solver '{self.solver}'; choose one of {', '.join(SOLVERS)}.")
        strength = self.strength
        if strength is not None and (
            isinstance(strength, bool) or not isinstance(strength, int | float) or not 0.0 < strength <= 1.0
        ):
            raise RefFaceError(f"The strength must be greater than 0 and at most 1, got {strength!r}.")
        object.__setattr__(self, "seed", check_seed(self.seed))

    def with_changes(self, **changes: Any) -> SamplingOptions:
        """These options with `changes` (a None change keeps the value), checked again. Setting an option this
        method does not have is one sentence naming it."""
        given = {name: value for name, value in changes.items() if value is not None}
        foreign = [name for name in given if name in _OPTION_WORDS and getattr(self, name) is None]
        if foreign:
            words = " and ".join(_OPTION_WORDS[name] for name in foreign)
            verb = "is not an option" if len(foreign) == 1 else "are not options"
            raise RefFaceError(f"{words[0].upper()}{words[1:]} {verb} of {self.method}.")
        return dataclasses.replace(self, **given)

    def recorded(self) -> dict:
        """The options as a run's manifest records them (a resumed run must match). The reference context is
        recorded only when one part of it is chosen, and the fidelity weight only for the method that has it, so
        manifests written before they were options still match."""
        recorded = dataclasses.asdict(self)
        if self.context in (None, "both"):
            del recorded["context"]
        if self.fidelity is None:
            del recorded["fidelity"]
        return recorded


# Each method's defaults, the one place they are written: its pipeline samples with them when told nothing,
# and the method registry offers them to every front end.
REFLDM_OPTIONS = SamplingOptions("ReF-LDM", steps=50, guidance=1.5, spacing="uniform_trailing", solver="ddim")
COMPOSITE_OPTIONS = SamplingOptions(
    "Composite-Context", steps=50, guidance=1.2, lq_guidance=1.2, color_fix=True, context="both"
)
# The blind restorers (the papers' baselines): one network pass, no references. CodeFormer's fidelity weight
# is its inference script's default; GFPGAN's decoder draws noise, so its seed matters.
CODEFORMER_OPTIONS = SamplingOptions("CodeFormer", steps=None, guidance=None, strength=None, fidelity=0.5)
GFPGAN_OPTIONS = SamplingOptions("GFPGAN v1.4", steps=None, guidance=None, strength=None)
RESTOREFORMER_PP_OPTIONS = SamplingOptions("RestoreFormer++", steps=None, guidance=None, strength=None)


@dataclass
class RestorationOutput:
    """Restored images (8-bit, working resolution) and the float results they came from."""

    images: list[Image.Image]
    pixels: torch.Tensor  # [B, 3, H, W] in [0, 1]
    latents: torch.Tensor  # final latents [B, C, h, w]


class RestorationPipeline(Protocol):
    """What the workflow (`refface.restoration`) needs of a method's pipeline, whichever method it is.

    `encode_references` turns a person's reference crops into whatever the method conditions on (None or an
    empty encoding for no references), once per person; calling restores a batch of LQ crops of one person with
    `options` (None: `default_options`). `seed` overrides the options' seed, one per image when a sequence. (Each
    pipeline also takes its own keyword arguments, e.g. `num_inference_steps`, which change the options.)
    """

    default_options: SamplingOptions

    @property
    def device(self) -> torch.device: ...

    @property
    def dtype(self) -> torch.dtype: ...

    def encode_references(self, references: Sequence[Image.Image | torch.Tensor]) -> Any: ...

    def __call__(
        self,
        lq: Sequence[Image.Image | torch.Tensor] | torch.Tensor,
        references: Any = None,
        *,
        options: SamplingOptions | None = None,
        seed: int | Sequence[int] | None = None,
        noise: torch.Tensor | None = None,
        progress: bool = True,
        step_callback: StepCallback | None = None,
    ) -> RestorationOutput: ...


def options_for(pipeline_options: SamplingOptions, options: SamplingOptions | None, **changes: Any) -> SamplingOptions:
    """The options a pipeline call samples with: `options` (default: the pipeline's own) with the call's keyword
    `changes`; options made for another method are one sentence."""
    chosen = pipeline_options if options is None else options
    if chosen.method != pipeline_options.method:
        raise RefFaceError(
            f"These sampling options are {chosen.method}'s; a {pipeline_options.method} pipeline takes its own "
            "(the method registry's get(name).sampling())."
        )
    return chosen.with_changes(**changes)


def seeds_for(options: SamplingOptions, batch_size: int, seed: int | Sequence[int] | None) -> list[int]:
    """One noise seed per image: the options' seed, `seed` for all, or `seed`'s own (their number must match)."""
    if seed is None or isinstance(seed, int):
        return [check_seed(options.seed if seed is None else seed)] * batch_size
    seeds = [check_seed(value) for value in seed]
    if len(seeds) != batch_size:
        raise RefFaceError(f"Got {len(seeds)} seeds for {batch_size} images.")
    return seeds
