"""`refface benchmark`: restore a paper's test set with one method, score it, and tabulate it as the papers do.

What lands in OUT:

    OUT/<set>/<method>/settings.json               what made the images; other settings are refused
    OUT/<set>/<method>/refs-<k>/images/<name>.png  restorations with at most k references (refs-0: none)
    OUT/<set>/<method>/refs-<k>/eval/              `refface evaluate`'s per_image.csv, summary.csv/md, cache
    OUT/<set>/table.md, table.csv                  every method of the folder at the main reference count
    OUT/<set>/sweep.md                             each method over the reference counts (its paper's study)
    OUT/<set>/contact_sheet.png                    LQ | references | each method | GT for a few examples

Restoration skips images already written, so an interrupted run resumes; under `accelerate launch`
each process restores every n-th case and the main process evaluates once all are done. A case
with fewer references than asked for uses all it has, as the official script does.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from tqdm.auto import tqdm

from refface import methods
from refface.errors import RefFaceError
from refface.evaluation.benchmark_report import write_set_tables
from refface.evaluation.contact_sheet import write_contact_sheet
from refface.evaluation.evaluate import METRICS, EvalCase, EvaluationOptions, EvaluationResult, evaluate_cases
from refface.evaluation.paper_sets import BenchmarkCase, BenchmarkData
from refface.evaluation.restorers import Restorer
from refface.files import write_text_atomically
from refface.imaging import load_image, save_image


@dataclass
class BenchmarkReport:
    """The set's folder, the evaluation of each reference count, and the tables and pictures written."""

    folder: Path
    results: dict[int, EvaluationResult] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)


def reference_counts(restorer: Restorer, max_refs: int, sweep: Sequence[int]) -> list[int]:
    """The main count first (its table is ready soonest), then the rest of the sweep; 0 for a method without."""
    if not restorer.uses_references:
        return [0]
    if max_refs < 1 or any(k < 1 for k in sweep):
        raise RefFaceError(f"Reference counts must be at least 1, got --max-refs {max_refs} and sweep {list(sweep)}.")
    return [max_refs, *sorted({k for k in sweep if k != max_refs})]


def check_settings(folder: Path, settings: dict) -> None:
    """Record what makes the images in `folder`, or refuse when the folder was made with something else."""
    path = folder / "settings.json"
    if path.is_file():
        try:
            recorded = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise RefFaceError(f"The settings file {path} is unreadable; remove it if {folder} is empty.") from None
        changed = sorted(key for key in settings.keys() | recorded.keys() if settings.get(key) != recorded.get(key))
        if changed:
            key = changed[0]
            raise RefFaceError(
                f"{folder} holds restorations made with {key}={recorded.get(key)!r}, not {settings.get(key)!r}; "
                "use another --out or the same settings."
            )
        return
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomically(path, json.dumps(settings, indent=2, sort_keys=True) + "\n")


def restore_cases(
    cases: Sequence[BenchmarkCase],
    restorer: Restorer,
    folder: Path,
    num_refs: int,
    state=None,
    progress: bool = True,
) -> int:
    """Restore every case not yet in `folder` with at most `num_refs` references; returns how many were made.

    Each image is written atomically as soon as it is done, so a kill loses at most the one in flight.
    """
    rank, world = (state.process_index, state.num_processes) if state is not None else (0, 1)
    todo = [case for case in cases[rank::world] if not (folder / f"{case.name}.png").is_file()]
    label = f"restore, {num_refs} refs" if num_refs else "restore, no refs"
    for case in tqdm(todo, desc=label, unit="image", disable=not progress or rank != 0):
        references = [load_image(path) for path in case.refs[:num_refs]]
        save_image(restorer.restore(load_image(case.lq), references), folder / f"{case.name}.png")
    if state is not None:
        state.wait_for_everyone()
    return len(todo)


def run_benchmark(
    data: BenchmarkData,
    restorer: Restorer,
    method: str,
    out: str | Path,
    max_refs: int | None = None,
    sweep: Sequence[int] | None = None,
    metrics: Sequence[str] = METRICS,
    limit: int | None = None,
    examples: int = 6,
    progress: bool = True,
    evaluation: EvaluationOptions | None = None,
    state=None,
) -> BenchmarkReport:
    """Restore `data` with `restorer` at every reference count, evaluate each, and write the set's tables.

    `max_refs` (the main table's references) and `sweep` (the reference counts of the study) default to the
    method's paper's (`refface.methods.Method.benchmark`).
    `evaluation` says how to score (device, batches, downloads; its `progress` is this call's); `limit`
    restores and scores only the first cases (a quick look; the tables say so).
    `state` is Accelerate's PartialState when several processes share the work (None: this one does all).
    """
    if limit is not None and limit < 1:
        raise RefFaceError(f"--limit must be at least 1, got {limit}.")
    cases = data.cases[:limit] if limit else data.cases
    if max_refs is None or sweep is None:
        defaults = methods.benchmark_method(method)[0].benchmark
        max_refs = defaults.references if max_refs is None else max_refs
        sweep = defaults.sweep if sweep is None else sweep
    counts = reference_counts(restorer, max_refs, sweep)
    set_folder = Path(out) / data.layout.name
    method_folder = set_folder / method
    is_main = state is None or state.is_main_process
    if is_main:
        check_settings(method_folder, {"method": method, **restorer.describe()})
    if state is not None:
        state.wait_for_everyone()
    report = BenchmarkReport(set_folder)
    for count in counts:
        images = method_folder / f"refs-{count}" / "images"
        restore_cases(cases, restorer, images, count, state, progress)
        if not is_main:
            continue
        eval_cases = [
            EvalCase(case.name, images / f"{case.name}.png", case.gt, case.refs[0], fit_gt=True) for case in cases
        ]
        options = replace(evaluation or EvaluationOptions(), progress=progress)
        report.results[count] = evaluate_cases(
            eval_cases, method_folder / f"refs-{count}" / "eval", metrics, images, options
        )
        report.files = write_set_tables(set_folder, data.layout.title, counts[0], len(data.cases), method)
        report.files.append(write_contact_sheet(set_folder, cases, counts[0], examples))
    return report
