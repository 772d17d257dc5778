"""Fixed LQ test sets (FFHQ-Ref Moderate/Severe, CelebA-Test-Ref style) made reproducibly from a reference CSV.

A benchmark set is only comparable across papers and runs if anyone can regenerate it bit for bit,
so image i of the CSV is degraded with the generator of (seed, i) and every sampled parameter is
written next to the images.
"""

from __future__ import annotations

from pathlib import Path

from refface.data.degradations import degradation_by_name
from refface.data.degrade_folder import degrade_images
from refface.data.embed import check_images_exist
from refface.data.reference_csv import read_reference_csv, write_reference_csv
from refface.errors import RefFaceError

REFERENCES_FILE = "references.csv"


def make_benchmark_set(
    references_csv: str | Path,
    images_dir: str | Path,
    out_dir: str | Path,
    preset: str = "severe",
    seed: int = 0,
    size: int | None = 512,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write OUT_DIR/<stem>.png (LQ at `size`), degradation_params.csv and references.csv; return OUT_DIR.

    FFHQ-Ref's test LQ images were made from the 512x512 FFHQ images, hence the default size.
    Resuming an interrupted run continues with the images not yet written.
    """
    entries = read_reference_csv(references_csv)
    if not entries:
        raise RefFaceError(f"The reference CSV {references_csv} lists no images.")
    images_dir, out_dir = Path(images_dir), Path(out_dir)
    check_images_exist([e.gt_image for e in entries], images_dir)
    degradation = degradation_by_name(preset)
    degrade_images(
        [e.gt_image for e in entries],
        images_dir,
        out_dir,
        degradation,
        seed,
        size,
        overwrite=overwrite,
        progress=progress,
    )
    write_reference_csv(out_dir / REFERENCES_FILE, entries)
    return out_dir
