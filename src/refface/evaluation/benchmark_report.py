"""The tables of a benchmark folder, in the papers' layout: methods as rows, metrics as columns.

Every method's evaluations under OUT/<set>/<method>/refs-<k>/eval/summary.csv are collected, so
methods run at different times (or by different people, copied into one folder) share one table.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from refface import methods
from refface.errors import RefFaceError
from refface.evaluation.evaluate import LOWER_IS_BETTER, METRICS, STD_SUFFIX, mean_and_spread
from refface.files import write_text_atomically


def read_summaries(set_folder: Path) -> dict[str, dict[int, dict[str, str]]]:
    """{method: {reference count: {column: value}}} from every evaluation in the set's folder."""
    found: dict[str, dict[int, dict[str, str]]] = {}
    for summary in sorted(set_folder.glob("*/refs-*/eval/summary.csv")):
        count_text = summary.parent.parent.name.removeprefix("refs-")
        if not count_text.isdigit():
            continue
        with summary.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        if rows:
            found.setdefault(summary.parent.parent.parent.name, {})[int(count_text)] = rows[0]
    return found


def main_count(counts: dict[int, dict[str, str]], main_refs: int) -> int:
    """The method's row for the main table: the main count, else without references, else its largest count."""
    if main_refs in counts:
        return main_refs
    return 0 if 0 in counts else max(counts)


def _main_refs(method: str, run: str | None, main_refs: int) -> int:
    """The main count of `method`'s row: the run's for the method just run (`run`), its paper's for the others
    (so a blind restorer's run, at 0, does not move ReF-LDM's row off its 5 references)."""
    if method == run:
        return main_refs
    try:
        return methods.benchmark_method(method)[0].benchmark.references
    except RefFaceError:  # a folder of outputs made elsewhere
        return main_refs


def _rows(summaries: dict[str, dict[int, dict[str, str]]], run: str | None, main_refs: int):
    """(method, its main count, its summary there) of each method, in name order."""
    for method, counts in sorted(summaries.items()):
        count = main_count(counts, _main_refs(method, run, main_refs))
        yield method, count, counts[count]


def _metric_columns(summaries: dict[str, dict[int, dict[str, str]]]) -> list[str]:
    present = {key for counts in summaries.values() for row in counts.values() for key in row}
    return [m for m in METRICS if m in present]


def _markdown(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|---" * len(header) + "|", *("| " + " | ".join(r) + " |" for r in rows)]


def _label(metric: str) -> str:
    return f"{metric} {'↓' if metric in LOWER_IS_BETTER else '↑'}"


def _row(method: str, count: int, summary: dict[str, str], metrics: list[str]) -> list[str]:
    """A markdown row: each metric as "mean ± std" (n/a where unavailable)."""
    cells = (mean_and_spread(summary.get(m) or "n/a", summary.get(m + STD_SUFFIX, "")) for m in metrics)
    return [method, str(count), summary.get("images", ""), *cells]


def _csv_row(method: str, count: int, summary: dict[str, str], metrics: list[str]) -> list[str]:
    """A CSV row: each metric's mean and standard deviation in columns of their own (empty where unavailable)."""
    values = (summary.get(m + suffix, "") for m in metrics for suffix in ("", STD_SUFFIX))
    return [method, str(count), summary.get("images", ""), *values]


def write_set_tables(
    set_folder: Path, title: str, main_refs: int, total_cases: int, run: str | None = None
) -> list[Path]:
    """table.md / table.csv (method `run` at `main_refs` references, the others at their papers') and sweep.md
    (each method per count)."""
    summaries = read_summaries(set_folder)
    metrics = _metric_columns(summaries)
    chosen = list(_rows(summaries, run, main_refs))
    rows = [_row(method, count, summary, metrics) for method, count, summary in chosen]
    labelled = ["method", "refs", "images", *map(_label, metrics)]
    partial = [r[0] for r in rows if r[2] != str(total_cases)]
    note = f"{title}, {total_cases} test images; n/a = unavailable (see the method's eval/summary.md)."
    if partial:
        note += f" Scored on part of the set (--limit): {', '.join(partial)}."
    lines = [f"## {title}", "", *_markdown(labelled, rows), "", note]
    table_md = set_folder / "table.md"
    write_text_atomically(table_md, "\n".join(lines) + "\n")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["method", "refs", "images", *(f"{m}{suffix}" for m in metrics for suffix in ("", STD_SUFFIX))])
    writer.writerows(_csv_row(method, count, summary, metrics) for method, count, summary in chosen)
    table_csv = set_folder / "table.csv"
    write_text_atomically(table_csv, buffer.getvalue())

    sweep_rows = [
        _row(method, count, counts[count], metrics)
        for method, counts in sorted(summaries.items())
        if len(counts) > 1
        for count in sorted(counts)
    ]
    sweep_lines = [f"## {title}: number of references", ""]
    if sweep_rows:
        sweep_lines += _markdown(labelled, sweep_rows)
    else:
        sweep_lines.append("No method of this folder was run with more than one reference count.")
    sweep_md = set_folder / "sweep.md"
    write_text_atomically(sweep_md, "\n".join(sweep_lines) + "\n")
    return [table_md, table_csv, sweep_md]
