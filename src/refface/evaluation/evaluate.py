"""`refface evaluate`: score a folder of restorations against ground truth, resumably, into tables.

Restorations and GT images are matched by file name without extension. Per-image scores are
appended to `OUT/scores.jsonl` after every batch, keyed by the restoration's size and modification
time, so an interrupted evaluation continues where it stopped and a re-run after changing a file
recomputes only that file. The results are `per_image.csv` (one row per image) and `summary.csv` /
`summary.md` (one column per metric, means over images; FID over the folder).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from refface.errors import RefFaceError
from refface.evaluation.catalogue import METRICS
from refface.evaluation.metrics import ImageMetric, Unavailable
from refface.files import write_text_atomically
from refface.imaging import SAVE_FORMATS, load_image, resize_square, save_image

OFFLINE_METRICS = ("ids_dlib", "psnr", "ssim")
STD_SUFFIX = "_std"  # summary.csv and table.csv: each metric's standard deviation over the images, beside its mean
LOWER_IS_BETTER = {"lpips", "flpips", "niqe", "fid"}
MASK_EXAMPLES = 4  # face-region debug images written for the first cases


@dataclass(frozen=True)
class EvalCase:
    """One restoration, its GT and first reference; `fit_gt` shrinks a larger square GT to the restoration.

    Benchmarks keep one copy of FFHQ (often 1024 px) while the test sets are scored at 512 px, as the
    papers do with FFHQ's 512-pixel images; a folder comparison (`fit_gt` False) refuses mismatched sizes.
    """

    name: str
    pred: Path
    gt: Path
    ref: Path | None = None
    fit_gt: bool = False


@dataclass
class EvaluationResult:
    """Mean scores (None where unavailable), their standard deviations over the images (None for FID, a score of
    the whole set), the reasons for what is unavailable, and where the tables were written."""

    summary: dict[str, float | None]
    unavailable: dict[str, str]
    per_image: dict[str, dict[str, float]]
    out: Path
    files: list[Path] = field(default_factory=list)
    spread: dict[str, float | None] = field(default_factory=dict)


def images_by_stem(folder: Path, role: str) -> dict[str, Path]:
    """The images of `folder` by name without extension; a missing or empty folder or a clash is an error."""
    if not folder.is_dir():
        raise RefFaceError(f"The {role} folder {folder} does not exist.")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() in SAVE_FORMATS and path.is_file():
            if path.stem in found:
                raise RefFaceError(f"The {role} folder {folder} has two images named {path.stem} ({path.name}).")
            found[path.stem] = path
    if not found:
        raise RefFaceError(f"The {role} folder {folder} holds no images.")
    return found


def find_cases(
    pred_dir: str | Path, gt_dir: str | Path, refs_csv: str | Path | None = None, refs_dir: str | Path | None = None
) -> list[EvalCase]:
    """Pair every restoration with its GT (and the first reference of the CSV); any gap is an error."""
    preds, gts = images_by_stem(Path(pred_dir), "restorations"), images_by_stem(Path(gt_dir), "ground-truth")
    orphans = sorted(set(preds) - set(gts))
    if orphans:
        raise RefFaceError(
            f"{len(orphans)} restoration(s) in {pred_dir} have no ground truth in {gt_dir} (matched by name "
            f"without extension), e.g. {preds[orphans[0]].name}."
        )
    missing = sorted(set(gts) - set(preds))
    if missing:
        raise RefFaceError(
            f"{len(missing)} ground-truth image(s) in {gt_dir} have no restoration in {pred_dir}, e.g. "
            f"{gts[missing[0]].name}; a partial folder would make the averages incomparable."
        )
    first_refs: dict[str, Path] = {}
    if refs_csv is not None:
        from refface.data.reference_csv import read_reference_csv

        ref_folder = Path(refs_dir) if refs_dir is not None else Path(gt_dir)
        for entry in read_reference_csv(refs_csv):
            if entry.ref_images:
                first_refs[Path(entry.gt_image).stem] = ref_folder / entry.ref_images[0]
        absent = sorted(set(preds) - set(first_refs))
        if absent:
            raise RefFaceError(f"The reference CSV {refs_csv} lists no reference for {preds[absent[0]].name}.")
        unreadable = next((p for p in first_refs.values() if not p.is_file()), None)
        if unreadable is not None:
            raise RefFaceError(f"The reference image {unreadable} listed in {refs_csv} does not exist.")
    return [EvalCase(name, preds[name], gts[name], first_refs.get(name)) for name in sorted(preds)]


def _stamp(path: Path) -> str:
    status = path.stat()
    return f"{status.st_size}:{status.st_mtime_ns}"


def _read_scores(path: Path) -> dict[tuple[str, str, str], float]:
    """Cached scores by (case, stamp, metric); a torn last line (a kill mid-write) is ignored."""
    scores = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
                scores[(record["case"], record["stamp"], record["metric"])] = float(record["value"])
            except (ValueError, KeyError, TypeError):
                continue
    return scores


def _load_rgb(path: Path) -> np.ndarray:
    return np.asarray(load_image(path))


def _load_batch(cases: Sequence[EvalCase], needs_refs: bool):
    preds, gts, refs = [], [], []
    for case in cases:
        pred, gt = _load_rgb(case.pred), _load_rgb(case.gt)
        if case.fit_gt and pred.shape != gt.shape and pred.shape[0] == pred.shape[1] and gt.shape[0] == gt.shape[1]:
            gt = resize_square(gt, pred.shape[0])
        if pred.shape != gt.shape:
            raise RefFaceError(
                f"The restoration {case.pred} is {pred.shape[1]}x{pred.shape[0]} but its ground truth {case.gt} is "
                f"{gt.shape[1]}x{gt.shape[0]}; evaluate at the GT's size."
            )
        preds.append(pred)
        gts.append(gt)
        refs.append(_load_rgb(case.ref) if needs_refs and case.ref is not None else None)
    return preds, gts, refs


def mean_and_spread(mean: str, spread: str) -> str:
    """A table cell: "mean ± std", or the mean alone where there is no spread (FID; unavailable: the mean's text)."""
    return f"{mean} ± {spread}" if mean not in ("", "n/a") and spread else mean


def _write_tables(out: Path, cases, names, per_image, summary, spread, unavailable) -> list[Path]:
    rows = io.StringIO()
    writer = csv.writer(rows, lineterminator="\n")
    writer.writerow(["image", *names])
    for case in cases:
        values = per_image.get(case.name, {})
        writer.writerow([case.pred.name, *(_cell(values.get(n)) for n in names)])
    per_image_path = out / "per_image.csv"
    write_text_atomically(per_image_path, rows.getvalue())

    columns = list(names)
    rows = io.StringIO()
    writer = csv.writer(rows, lineterminator="\n")
    writer.writerow(["images", *(f"{n}{suffix}" for n in columns for suffix in ("", STD_SUFFIX))])
    writer.writerow([len(cases), *(_cell(value.get(n)) for n in columns for value in (summary, spread))])
    summary_csv = out / "summary.csv"
    write_text_atomically(summary_csv, rows.getvalue())

    arrows = [f"{n} {'↓' if n in LOWER_IS_BETTER else '↑'}" for n in columns]
    lines = [
        "| images | " + " | ".join(arrows) + " |",
        "|---" * (len(columns) + 1) + "|",
        f"| {len(cases)} | "
        + " | ".join(mean_and_spread(_cell(summary.get(n), "n/a"), _cell(spread.get(n))) for n in columns)
        + " |",
    ]
    if unavailable:
        lines += ["", "Unavailable:"] + [f"- `{n}`: {reason}." for n, reason in unavailable.items()]
    summary_md = out / "summary.md"
    write_text_atomically(summary_md, "\n".join(lines) + "\n")
    return [per_image_path, summary_csv, summary_md]


def _cell(value: float | None, missing: str = "") -> str:
    if value is None:
        return missing
    return "inf" if math.isinf(value) else f"{value:.4f}"


@dataclass(frozen=True)
class EvaluationOptions:
    """How to score: on which device, in what batches, whether weights may be downloaded, what to use instead.

    `metric_factory(names, device, download, arcface_weights, has_refs)` replaces the built-in metrics
    (tests, or a task with its own identity score).
    """

    device: str | torch.device | None = None
    batch_size: int = 8
    download: bool = True
    arcface_weights: str | Path | None = None
    fid_reference: str | Path | None = None
    progress: bool = True
    metric_factory: Callable[..., tuple[list[ImageMetric], dict[str, str]]] | None = None


def evaluate_folders(
    pred_dir: str | Path,
    gt_dir: str | Path,
    out: str | Path,
    metrics: Sequence[str] = METRICS,
    refs_csv: str | Path | None = None,
    refs_dir: str | Path | None = None,
    device: str | torch.device | None = None,
    batch_size: int = 8,
    download: bool = True,
    arcface_weights: str | Path | None = None,
    fid_reference: str | Path | None = None,
    progress: bool = True,
    metric_factory: Callable[..., tuple[list[ImageMetric], dict[str, str]]] | None = None,
) -> EvaluationResult:
    """Score `pred_dir` against `gt_dir` with `metrics`, writing the tables into `out`; see the module doc."""
    options = EvaluationOptions(device, batch_size, download, arcface_weights, fid_reference, progress, metric_factory)
    return evaluate_cases(find_cases(pred_dir, gt_dir, refs_csv, refs_dir), out, metrics, Path(pred_dir), options)


def evaluate_cases(
    cases: Sequence[EvalCase],
    out: str | Path,
    metrics: Sequence[str],
    pred_dir: Path,
    options: EvaluationOptions | None = None,
) -> EvaluationResult:
    """Score prepared cases (FID over `pred_dir`, the folder holding every restoration) into the tables in `out`."""
    options = options or EvaluationOptions()
    batch_size, progress = options.batch_size, options.progress
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise RefFaceError(f"Unknown metric {unknown[0]!r}; choose from {', '.join(METRICS)}.")
    if batch_size < 1:
        raise RefFaceError(f"The batch size must be at least 1, got {batch_size}.")
    if not cases:
        raise RefFaceError(f"There is nothing to evaluate in {pred_dir}.")
    device = options.device or ("cuda" if torch.cuda.is_available() else "cpu")
    names = [m for m in METRICS if m in metrics]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    from refface.evaluation.registry import build_metrics

    factory = options.metric_factory or build_metrics
    image_metrics, unavailable = factory(
        [n for n in names if n != "fid"],
        device,
        options.download,
        options.arcface_weights,
        has_refs=all(c.ref for c in cases),
    )
    cache_path = out / "scores.jsonl"
    cached = _read_scores(cache_path)
    stamps = {case.name: _stamp(case.pred) for case in cases}

    def todo(metric: ImageMetric) -> list[EvalCase]:
        return [c for c in cases if (c.name, stamps[c.name], metric.name) not in cached]

    pending = {metric.name: set(todo(metric)) for metric in image_metrics}
    unscored = [c for c in cases if any(c in p for p in pending.values())]
    total = sum(len(p) for p in pending.values())
    with tqdm(total=total, desc="evaluate", unit="score", disable=not progress) as bar, cache_path.open("a") as log:
        for start in range(0, len(unscored), batch_size):
            batch = unscored[start : start + batch_size]
            wanted = [m for m in image_metrics if any(c in pending[m.name] for c in batch)]
            preds, gts, refs = _load_batch(batch, any(m.needs_refs for m in wanted))
            for metric in wanted:
                chosen = [i for i, case in enumerate(batch) if case in pending[metric.name]]
                values = metric.compute([preds[i] for i in chosen], [gts[i] for i in chosen], [refs[i] for i in chosen])
                for index, value in zip(chosen, values, strict=True):
                    key = (batch[index].name, stamps[batch[index].name], metric.name)
                    cached[key] = float(value)
                    log.write(json.dumps({"case": key[0], "stamp": key[1], "metric": key[2], "value": float(value)}))
                    log.write("\n")
                    bar.update()
            log.flush()

    per_image = {c.name: {m.name: cached[(c.name, stamps[c.name], m.name)] for m in image_metrics} for c in cases}
    summary: dict[str, float | None] = {n: None for n in names}
    spread: dict[str, float | None] = {n: None for n in names}
    for metric in image_metrics:
        values = [per_image[c.name][metric.name] for c in cases]
        summary[metric.name] = float(np.mean(values))
        spread[metric.name] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    if "fid" in names:
        from refface.evaluation.pyiqa_metrics import fid

        extra = set(images_by_stem(Path(pred_dir), "restorations")) - {c.pred.stem for c in cases}
        if extra:
            value = Unavailable(f"{pred_dir} also holds {len(extra)} image(s) outside the evaluated cases")
        else:
            reference = Path(options.fid_reference) if options.fid_reference else None
            value = fid(Path(pred_dir), reference, device)
        if isinstance(value, Unavailable):
            unavailable["fid"] = value.reason
        else:
            summary["fid"] = value
    files = _write_tables(out, cases, names, per_image, summary, spread, unavailable)
    if "flpips" in names:
        files += _face_mask_examples(out, cases)
    return EvaluationResult(summary, unavailable, per_image, out, files, spread)


def _face_mask_examples(out: Path, cases: Sequence[EvalCase]) -> list[Path]:
    """GT images with the fLPIPS face region drawn on them (out/face_masks/), so the region can be checked by eye."""
    from PIL import Image

    from refface.evaluation.face_region import FaceRegionFinder, mask_debug_image

    finder, written = FaceRegionFinder(), []
    for case in cases[:MASK_EXAMPLES]:
        gt = _load_rgb(case.gt)
        picture = Image.fromarray(mask_debug_image(gt, finder(gt).mask))
        written.append(save_image(picture, out / "face_masks" / f"{case.name}.png"))
    return written
