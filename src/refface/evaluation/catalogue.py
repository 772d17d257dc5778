"""What refface can measure and on which sets: the metric names and the papers' test set layouts.

Plain data in a module of its own, so the command line lists them without loading torch or the metrics.
"""

from __future__ import annotations

from dataclasses import dataclass

METRICS = ("ids", "ids_ref", "ids_facenet", "ids_dlib", "lpips", "flpips", "psnr", "ssim", "niqe", "musiq", "fid")


@dataclass(frozen=True)
class SetLayout:
    """Where a named test set keeps its reference CSV and LQ images, relative to the data folder."""

    name: str
    title: str
    references_csv: str
    lq_dir: str
    preset: str  # the degradation `refface dataset benchmark` makes its LQ with


SETS = {
    "ffhq-ref-severe": SetLayout(
        "ffhq-ref-severe",
        "FFHQ-Ref-Severe",
        "reference_mapping/test_references.csv",
        "test_images/severe_degrad",
        "severe",
    ),
    "ffhq-ref-moderate": SetLayout(
        "ffhq-ref-moderate",
        "FFHQ-Ref-Moderate",
        "reference_mapping/test_references.csv",
        "test_images/moderate_degrad",
        "moderate",
    ),
    "celeba-test-ref": SetLayout(
        "celeba-test-ref", "CelebA-Test-Ref", "reference_mapping/test_references.csv", "lq", "severe"
    ),
    # Your own set, e.g. `refface dataset build album_aligned/ my-set` + `refface dataset benchmark ... my-set/lq`.
    "custom": SetLayout("custom", "Custom test set", "reference_mapping/test_references.csv", "lq", "severe"),
}
