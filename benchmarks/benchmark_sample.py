"""A sample `refface benchmark` table on a CPU: the mechanism study's models on its held-out people.

    python benchmarks/benchmark_sample.py --study bench-out/mechanism --out bench-out/benchmark-sample

The papers' tables need FFHQ and the released weights; this runs the same `run_benchmark` (restore,
resume, evaluate, tables, sweep, contact sheet) on what a CPU can make: the held-out split of
`benchmarks/mechanism.py`'s synthetic task, written to disk as an FFHQ-Ref style test set (HQ images,
reference CSV, LQ folder made with the study's degradation), restored by the study's CacheKV model with
references (1/3/5) and without. `ids` here is the task's ground-truth identity score
(`refface.data.synthetic_identity`), standing in for ArcFace IDS, which needs real faces.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from dataclasses import replace
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.mechanism import DEGRADATION, PHOTOS, SEED, SIZE, VARIATION, Budget  # noqa: E402

from refface import methods  # noqa: E402
from refface.data.degradations import degrade  # noqa: E402
from refface.data.reference_csv import ReferenceEntry, write_reference_csv  # noqa: E402
from refface.data.synthetic import SyntheticReferenceDataset  # noqa: E402
from refface.data.synthetic_identity import SyntheticIdentityScorer  # noqa: E402
from refface.evaluation.benchmark import run_benchmark  # noqa: E402
from refface.evaluation.evaluate import EvaluationOptions  # noqa: E402
from refface.evaluation.metrics import PSNR, SSIM, ImageMetric  # noqa: E402
from refface.evaluation.paper_sets import SetLayout, locate_set  # noqa: E402
from refface.evaluation.restorers import benchmark_sampling, build_restorer  # noqa: E402

LAYOUT = SetLayout("synthetic-test", "Synthetic identities, 48 held-out people", "test_references.csv", "lq", "")


def write_test_set(folder: Path, dataset: SyntheticReferenceDataset, targets: int) -> None:
    """HQ photos, the reference CSV (a target's other photos) and the LQ of each target; skipped if present."""
    if (folder / LAYOUT.references_csv).is_file():
        return
    entries = []
    for identity in range(len(dataset.identities)):
        for photo in range(PHOTOS):
            Image.fromarray(dataset.photo(identity, photo)).save(folder / "images" / dataset.name(identity, photo))
        for target in range(targets):
            name = dataset.name(identity, target)
            others = tuple(dataset.name(identity, p) for p in range(PHOTOS) if p != target)
            entries.append(ReferenceEntry(name, others))
            lq = degrade(dataset.photo(identity, target), DEGRADATION, SEED, len(entries)).image
            Image.fromarray(lq).save(folder / LAYOUT.lq_dir / name)
    write_reference_csv(folder / LAYOUT.references_csv, entries)


class GroundTruthIdentity(ImageMetric):
    """The synthetic task's identity similarity, reported in the `ids` column (its role on real faces)."""

    name, higher_is_better = "ids", True

    def __init__(self, dataset: SyntheticReferenceDataset) -> None:
        self.scorer = SyntheticIdentityScorer(dataset)
        self.photos = {
            hashlib.sha1(dataset.photo(i, p).tobytes()).hexdigest(): (i, p)
            for i in range(len(dataset.identities))
            for p in range(PHOTOS)
        }

    def compute(self, preds, gts, refs) -> list[float]:
        return [self.scorer.score(pred, *self.photos[hashlib.sha1(gt.tobytes()).hexdigest()]).similarity
                for pred, gt in zip(preds, gts, strict=True)]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", type=Path, default=Path("bench-out/mechanism"), help="mechanism.py's --out")
    parser.add_argument("--out", type=Path, default=Path("bench-out/benchmark-sample"))
    parser.add_argument("--steps", type=int, default=25, help="DDIM steps (the study's)")
    args = parser.parse_args()
    model = args.study / "runs" / "cachekv" / "model"
    if not (model / "model_index.json").is_file():
        sys.exit(f"No trained CacheKV model in {model}; run benchmarks/mechanism.py --out {args.study} first.")
    budget = Budget()
    dataset = SyntheticReferenceDataset(
        budget.test_identities, PHOTOS, SIZE, 5, DEGRADATION, SEED, "test", flip=False, variation=VARIATION
    )
    set_folder = args.out / "data"
    for sub in ("images", LAYOUT.lq_dir):
        (set_folder / sub).mkdir(parents=True, exist_ok=True)
    write_test_set(set_folder, dataset, budget.targets_per_identity)
    data = locate_set(
        "custom", None, set_folder / "images", set_folder / LAYOUT.lq_dir, set_folder / LAYOUT.references_csv
    )
    data = replace(data, layout=LAYOUT)
    metric = GroundTruthIdentity(dataset)

    def metrics(names, *_, **__):
        return [m for m in (metric, PSNR(), SSIM()) if m.name in names], {}

    refldm = methods.get("refldm")
    options = benchmark_sampling(refldm, steps=args.steps, spacing="uniform_trailing", seed=SEED)
    for method in ("refldm", "refldm-no-refs"):
        restorer = build_restorer(method, options, sources=refldm.sources(model=model))
        run_benchmark(data, restorer, method, args.out, max_refs=5, sweep=[1, 3], metrics=["ids", "psnr", "ssim"],
                      evaluation=EvaluationOptions(metric_factory=metrics))  # fmt: skip
    folder = args.out / LAYOUT.name
    print((folder / "table.md").read_text(encoding="utf-8"))
    print((folder / "sweep.md").read_text(encoding="utf-8"))
    print(f"contact sheet: {folder / 'contact_sheet.png'}")


if __name__ == "__main__":
    main()
