"""The papers' test sets as they lie on disk: LQ images, GT and references, matched by file name.

A set is a reference CSV (`gt_image,ref_image`, the released FFHQ-Ref format) plus a folder of LQ
images named like the GT images; GT and references come from one HQ image folder (FFHQ, CelebA-HQ).
The default places inside `--data` are those `refface dataset build` and `refface dataset benchmark`
write (see docs/datasets.md, "Rebuilding FFHQ-Ref"); released sets laid out differently are passed with
explicit `lq_dir` / `references_csv`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from refface.data.embed import check_images_exist
from refface.data.reference_csv import read_reference_csv
from refface.errors import RefFaceError
from refface.evaluation.catalogue import SETS, SetLayout
from refface.evaluation.evaluate import images_by_stem


@dataclass(frozen=True)
class BenchmarkCase:
    """One test image: its LQ input, GT and references (most informative first, as the CSV orders them)."""

    name: str
    lq: Path
    gt: Path
    refs: tuple[Path, ...]


@dataclass(frozen=True)
class BenchmarkData:
    layout: SetLayout
    cases: tuple[BenchmarkCase, ...]
    references_csv: Path
    lq_dir: Path
    images_dir: Path


def locate_set(
    name: str,
    data_dir: str | Path | None,
    images_dir: str | Path,
    lq_dir: str | Path | None = None,
    references_csv: str | Path | None = None,
    refs_dir: str | Path | None = None,
) -> BenchmarkData:
    """Every case of test set `name`, with each file checked to exist; a gap is one sentence naming it.

    GT and references come from `images_dir`, or the references from `refs_dir` when a release keeps
    them apart (the official CelebA-Test-Ref evaluation reads GT from img_test_HQ, references from img_all).
    """
    if name not in SETS:
        raise RefFaceError(f"Unknown test set {name!r}; choose one of {', '.join(SETS)}.")
    layout = SETS[name]
    if data_dir is None and (lq_dir is None or references_csv is None):
        raise RefFaceError(f"Say where {layout.title} is: --data FOLDER, or both --lq and --csv.")
    csv_path = Path(references_csv) if references_csv is not None else Path(data_dir) / layout.references_csv
    lq_path = Path(lq_dir) if lq_dir is not None else Path(data_dir) / layout.lq_dir
    if not csv_path.is_file():
        raise RefFaceError(
            f"The reference CSV {csv_path} does not exist; build the dataset with `refface dataset build`, or pass "
            "--csv with the released test_references.csv."
        )
    if not lq_path.is_dir():
        raise RefFaceError(
            f"The LQ folder {lq_path} does not exist; make it with `refface dataset benchmark {csv_path} IMAGES "
            f"{lq_path} --preset {layout.preset}`, or pass --lq with the released LQ images."
        )
    entries = read_reference_csv(csv_path)
    if not entries:
        raise RefFaceError(f"The reference CSV {csv_path} lists no images.")
    lq_images = images_by_stem(lq_path, "LQ")
    images = Path(images_dir)
    references = Path(refs_dir) if refs_dir is not None else images
    check_images_exist([entry.gt_image for entry in entries], images)
    check_images_exist(sorted({ref for entry in entries for ref in entry.ref_images}), references)
    cases = []
    for entry in entries:
        stem = Path(entry.gt_image).stem
        if stem not in lq_images:
            missing = sum(Path(e.gt_image).stem not in lq_images for e in entries)
            raise RefFaceError(
                f"{missing} image(s) of {csv_path} have no LQ image in {lq_path} (matched by name), e.g. {stem}."
            )
        if not entry.ref_images:
            raise RefFaceError(f"The reference CSV {csv_path} lists no reference for {entry.gt_image}.")
        refs = tuple(references / ref for ref in entry.ref_images)
        cases.append(BenchmarkCase(stem, lq_images[stem], images / entry.gt_image, refs))
    return BenchmarkData(layout, tuple(cases), csv_path, lq_path, images)
