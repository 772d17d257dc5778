"""The sampling options of each method, checked against it: one place for the CLI, the web page and the API."""

from __future__ import annotations

from refface.errors import RefFaceError
from refface.pipelines.schedule import check_solver

METHOD_NAMES = ("refldm", "composite")
# Each method's paper default for the guidance toward the references.
DEFAULT_GUIDANCE = {"refldm": 1.5, "composite": 1.2}
DEFAULT_LQ_GUIDANCE = 1.2


def sampling_options(
    method: str,
    steps: int = 50,
    guidance: float | None = None,
    lq_guidance: float | None = None,
    color_fix: bool = True,
    schedule: str | None = None,
    solver: str | None = None,
) -> dict:
    """Keyword arguments for the method's pipeline call; an option of the other method is one sentence."""
    if method not in METHOD_NAMES:
        raise RefFaceError(f"Unknown method {method!r}; choose one of {', '.join(METHOD_NAMES)}.")
    if steps < 1:
        raise RefFaceError(f"The number of steps must be at least 1, got {steps}.")
    guidance = DEFAULT_GUIDANCE[method] if guidance is None else guidance
    if method == "composite":
        if schedule is not None or solver is not None:
            raise RefFaceError(
                "The timestep schedule and solver (--schedule, --solver, --fast) apply to ReF-LDM; "
                "the composite model samples with its own scheduler."
            )
        return {
            "num_inference_steps": steps,
            "lq_guidance": DEFAULT_LQ_GUIDANCE if lq_guidance is None else lq_guidance,
            "reference_guidance": guidance,
            "color_fix": color_fix,
        }
    if solver is not None:
        check_solver(solver)
    if lq_guidance is not None or not color_fix:
        raise RefFaceError(
            "The LQ guidance (--lq-guidance) and turning the colour fix off (--no-color-fix) "
            "apply to the composite method only."
        )
    return {
        "num_inference_steps": steps,
        "guidance_scale": guidance,
        "spacing": schedule or "uniform_trailing",
        "solver": solver or "ddim",
    }
