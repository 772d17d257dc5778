"""Build an FFHQ-Ref style reference dataset from ArcFace embeddings (ReF-LDM, NeurIPS 2024).

FFHQ has no identity labels. The references of an image are the images whose ArcFace cosine distance to it is
under a threshold (0.4 in the release), as the paper defines them (Sec. 4.1); the connected components of the
graph linking such pairs are identities, which keep the splits identity-disjoint so no person seen in training
is evaluated on (a chain A-B-C puts all three in one identity, but C is not a reference of A). Test references
must differ from their target by at least 0.1 so a near-duplicate cannot make restoration trivial; references
are ordered by farthest point sampling so the first few are the most varied.
"""

from __future__ import annotations

import csv
import json
import shutil
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from refface.data.identity_graph import (
    close_pairs,
    cosine_distances,
    identities_from_pairs,
    renumber_by_first_appearance,
    smallest_distance,
    unit_embeddings,
)
from refface.data.reference_csv import (
    SPLITS,
    ReferenceEntry,
    reference_csv_path,
    split_file_path,
    write_reference_csv,
    write_split_file,
)
from refface.errors import RefFaceError
from refface.face.farthest_point import fps_from_distances

# A pair list beyond this many pairs per image means the threshold joins nearly everyone; refuse it
# before the list itself exhausts memory (FFHQ at 0.4 links far fewer than one pair per image).
MAX_PAIRS_PER_IMAGE = 1000
EMBEDDINGS_FILE = "embeddings.npy"
NAMES_FILE = "names.txt"


@dataclass(frozen=True)
class BuildSettings:
    """The FFHQ-Ref construction choices; the defaults reproduce the released dataset's recipe."""

    threshold: float = 0.4
    val_ids: int = 300
    test_ids: int | None = 150  # None: every identity with references that val does not take (CelebA-Test-Ref)
    min_test_distance: float = 0.1
    seed: int = 0
    block_size: int = 4096


@dataclass
class ReferenceDataset:
    """A built dataset: identities, identity-disjoint splits, per-split references and statistics."""

    names: list[str]
    identities: np.ndarray
    splits: dict[str, list[str]]
    references: dict[str, list[ReferenceEntry]]
    statistics: dict


def _check_settings(settings: BuildSettings) -> None:
    if not 0 < settings.threshold < 2:
        raise RefFaceError(
            f"The identity threshold must be a cosine distance between 0 and 2, got {settings.threshold}."
        )
    if not 0 < settings.min_test_distance < 2:
        raise RefFaceError(
            f"The minimum test reference distance must be a cosine distance between 0 and 2, "
            f"got {settings.min_test_distance}."
        )
    for label, value in (("validation", settings.val_ids), ("test", settings.test_ids)):
        if value is None and label == "test":
            continue
        if int(value) != value or value < 0:
            raise RefFaceError(f"The number of {label} identities must be a whole number of at least 0, got {value}.")
    if int(settings.block_size) != settings.block_size or settings.block_size < 1:
        raise RefFaceError(f"The block size must be a whole number of at least 1, got {settings.block_size}.")


def _check_names(names: Sequence[str], embeddings: np.ndarray, source: str) -> list[str]:
    names = [str(name) for name in names]
    rows = embeddings.shape[0] if embeddings.ndim >= 1 else 0
    if len(names) != rows:
        raise RefFaceError(
            f"Got {rows} embeddings but {len(names)} image names for {source}; they must match one to one."
        )
    if len(names) < 2:
        raise RefFaceError(f"Got {len(names)} image(s) for {source}; at least 2 are needed to find references.")
    counts = Counter(names)
    repeated = [name for name, count in counts.items() if count > 1]
    if repeated:
        shown = ", ".join(repeated[:5]) + (" and more" if len(repeated) > 5 else "")
        raise RefFaceError(f"{len(repeated)} image name(s) appear more than once for {source}: {shown}.")
    return names


def _threshold_identities(unit: np.ndarray, settings: BuildSettings, source: str) -> tuple[np.ndarray, int]:
    """Labels from the close-pair graph, and how many pairs were linked."""
    rows, cols, _ = close_pairs(
        unit, settings.threshold, settings.block_size, source, max_pairs=MAX_PAIRS_PER_IMAGE * unit.shape[0]
    )
    if rows.size == 0:
        closest = smallest_distance(unit, settings.block_size)
        raise RefFaceError(
            f"No two images in {source} are closer than the threshold {settings.threshold} (the closest pair is "
            f"{closest:.4f} apart), so no identity has references; use a larger threshold."
        )
    return identities_from_pairs(unit.shape[0], rows, cols), int(rows.size)


def _given_identities(identities: Sequence[str | int], count: int, source: str) -> np.ndarray:
    labels = [str(label) for label in identities]
    if len(labels) != count:
        raise RefFaceError(
            f"Got {count} images but {len(labels)} identity labels for {source}; they must match one to one."
        )
    return renumber_by_first_appearance(np.asarray(labels, dtype=object).astype(str))


def _choose_splits(labels: np.ndarray, settings: BuildSettings, source: str) -> np.ndarray:
    """Split index (0 train, 1 val, 2 test) per identity; only identities with references are drawn."""
    sizes = np.bincount(labels)
    eligible = np.flatnonzero(sizes >= 2)  # sorted, so the draw depends only on the data and the seed
    val_ids = int(settings.val_ids)
    test_ids = max(eligible.size - val_ids, 0) if settings.test_ids is None else int(settings.test_ids)
    wanted = val_ids + test_ids
    if wanted > eligible.size:
        raise RefFaceError(
            f"Only {eligible.size} identities in {source} have references, fewer than the {settings.val_ids} "
            f"validation + {settings.test_ids} test identities requested ({wanted})."
        )
    drawn = np.random.default_rng(settings.seed).permutation(eligible)
    split_of_identity = np.zeros(sizes.size, dtype=np.int64)
    split_of_identity[drawn[:val_ids]] = 1
    split_of_identity[drawn[val_ids:wanted]] = 2
    return split_of_identity


@dataclass
class _Lost:
    """What the test rule left out: references under the minimum distance, targets with none left."""

    test_references: int = 0
    test_targets: int = 0


def _identity_references(
    members: np.ndarray,
    unit: np.ndarray,
    names: list[str],
    min_distance: float | None,
    threshold: float | None,
    lost: _Lost,
) -> list[tuple[int, ReferenceEntry]]:
    """Entries for one identity's images: the references of an image are the images of its identity within
    `threshold` of it (the paper's definition; None: every other image, for identities given by labels), and in
    the test split only those at least `min_distance` from it."""
    distances = cosine_distances(unit[members])
    entries: list[tuple[int, ReferenceEntry]] = []
    everyone = np.arange(members.size)
    for position, image in enumerate(members):
        candidates = everyone[everyone != position]
        if threshold is not None:
            candidates = candidates[distances[position, candidates] < threshold]
            if candidates.size == 0:  # only where rounding put its one link on the threshold
                continue
        if min_distance is not None:
            kept = candidates[distances[position, candidates] >= min_distance]
            lost.test_references += candidates.size - kept.size
            candidates = kept
            if candidates.size == 0:
                lost.test_targets += 1
                continue
        order = fps_from_distances(distances[position, candidates], distances[np.ix_(candidates, candidates)])
        refs = tuple(names[members[index]] for index in candidates[order])
        entries.append((int(image), ReferenceEntry(names[image], refs)))
    return entries


def _summary(counts: list[int]) -> dict | None:
    if not counts:
        return None
    values = np.asarray(counts)
    return {
        "min": int(values.min()),
        "median": float(np.median(values)),
        "mean": round(float(values.mean()), 4),
        "max": int(values.max()),
    }


def _histogram(values: Sequence[int]) -> dict[str, int]:
    return {str(key): count for key, count in sorted(Counter(int(value) for value in values).items())}


def _collect_references(
    labels: np.ndarray,
    split_of_image: np.ndarray,
    unit: np.ndarray,
    names: list[str],
    min_test_distance: float,
    threshold: float | None,
) -> tuple[dict[str, list[ReferenceEntry]], _Lost]:
    """Per-split entries in input order, and what the reference rules left out."""
    order = np.argsort(labels, kind="stable")
    groups = np.split(order, np.cumsum(np.bincount(labels))[:-1])
    collected: dict[str, list[tuple[int, ReferenceEntry]]] = {split: [] for split in SPLITS}
    lost = _Lost()
    for members in groups:
        if members.size < 2:
            continue
        split = SPLITS[split_of_image[members[0]]]
        rule = min_test_distance if split == "test" else None
        collected[split].extend(_identity_references(members, unit, names, rule, threshold, lost))
    references = {split: [entry for _, entry in sorted(items)] for split, items in collected.items()}
    return references, lost


def _split_statistics(
    labels: np.ndarray, split_of_image: np.ndarray, splits: dict, references: dict, names: list[str]
) -> dict:
    identity_of = dict(zip(names, labels.tolist(), strict=True))
    per_split = {}
    for index, split in enumerate(SPLITS):
        counts = [len(entry.ref_images) for entry in references[split]]
        per_split[split] = {
            "images": len(splits[split]),
            "identities": int(np.unique(labels[split_of_image == index]).size),
            "targets": len(references[split]),
            "identities_with_references": len({identity_of[entry.gt_image] for entry in references[split]}),
            "references": int(sum(counts)),
            "references_per_image": _summary(counts),
            "references_per_image_histogram": _histogram(counts),
        }
    return per_split


def build_reference_dataset(
    names: Sequence[str],
    embeddings: np.ndarray,
    settings: BuildSettings = BuildSettings(),  # noqa: B008 - frozen, so sharing the default is safe
    identities: Sequence[str | int] | None = None,
    source: str = "embeddings",
) -> ReferenceDataset:
    """Identities, identity-disjoint splits and FPS-ordered references, as FFHQ-Ref builds them.

    Row i of `embeddings` belongs to `names[i]`. Given `identities` (e.g. CelebA's identity file)
    replace the threshold graph; the embeddings still order references and apply the test rule.
    """
    _check_settings(settings)
    embeddings = np.asarray(embeddings)
    names = _check_names(names, embeddings, source)
    unit = unit_embeddings(embeddings, source, row_names=names)
    if identities is None:
        labels, pairs = _threshold_identities(unit, settings, source)
    else:
        labels, pairs = _given_identities(identities, len(names), source), None
    split_of_identity = _choose_splits(labels, settings, source)
    split_of_image = split_of_identity[labels]
    splits = {split: [names[i] for i in np.flatnonzero(split_of_image == index)] for index, split in enumerate(SPLITS)}
    threshold = settings.threshold if identities is None else None
    references, lost = _collect_references(
        labels, split_of_image, unit, names, settings.min_test_distance, threshold
    )

    sizes = np.bincount(labels)
    statistics = {
        "source": source,
        "images": len(names),
        "identities": int(sizes.size),
        "identity_source": "threshold" if identities is None else "given",
        "threshold": settings.threshold if identities is None else None,
        "pairs_linked": pairs,
        "largest_identity": int(sizes.max()),
        "single_image_identities": int((sizes == 1).sum()),
        "identity_size_histogram": _histogram(sizes),
        "seed": settings.seed,
        "val_ids": settings.val_ids,
        "test_ids": int((split_of_identity == 2).sum()),
        "min_test_distance": settings.min_test_distance,
        "test_references_removed": lost.test_references,
        "test_targets_dropped": lost.test_targets,
        "images_without_references": len(names) - sum(len(entries) for entries in references.values()),
        "splits": _split_statistics(labels, split_of_image, splits, references, names),
    }
    return ReferenceDataset(names, labels, splits, references, statistics)


def _statistics_markdown(statistics: dict) -> str:
    """A short report a person can read without opening the JSON."""
    if statistics["identity_source"] == "threshold":
        how = (
            f"connected components of {statistics['pairs_linked']} image pairs closer than ArcFace cosine "
            f"distance {statistics['threshold']}"
        )
        references_rule = (
            f"References of an image: the images of its identity within distance {statistics['threshold']} of it"
        )
    else:
        how = "the given identity labels"
        references_rule = "References of an image: every other image of its identity"
    lines = [
        "# Reference dataset statistics",
        "",
        f"- {statistics['images']} images of {statistics['identities']} identities, from {how}.",
        f"- Largest identity: {statistics['largest_identity']} images; "
        f"{statistics['single_image_identities']} identities have a single image (train, no references).",
        f"- {references_rule}; {statistics['images_without_references']} images have no reference (single-image "
        "identities, and test targets with none left at the minimum distance below).",
        f"- Test references at least {statistics['min_test_distance']} from their target: "
        f"{statistics['test_references_removed']} references removed, "
        f"{statistics['test_targets_dropped']} targets dropped for having none left.",
        f"- Split seed {statistics['seed']}; {statistics['val_ids']} validation and {statistics['test_ids']} "
        "test identities drawn from those with references.",
        "",
        "| split | images | identities | targets with references | their identities | refs/image min | median "
        "| mean | max |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for split in SPLITS:
        row = statistics["splits"][split]
        summary = row["references_per_image"] or dict.fromkeys(("min", "median", "mean", "max"), "-")
        lines.append(
            f"| {split} | {row['images']} | {row['identities']} | {row['targets']} | "
            f"{row['identities_with_references']} | {summary['min']} | {summary['median']} | {summary['mean']} | "
            f"{summary['max']} |"
        )
    return "\n".join(lines) + "\n"


def _plot_references_per_image(statistics: dict, path: Path) -> None:
    """Bar chart per split of how many references each target has."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(4 * len(SPLITS), 3.2), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(SPLITS), squeeze=False)[0]
    for axis, split in zip(axes, SPLITS, strict=True):
        histogram = statistics["splits"][split]["references_per_image_histogram"]
        axis.set_title(f"{split} ({statistics['splits'][split]['targets']} targets)")
        axis.set_xlabel("references per image")
        axis.set_ylabel("images")
        if histogram:
            axis.bar([int(key) for key in histogram], list(histogram.values()), color="#4c72b0")
        else:
            axis.text(0.5, 0.5, "no references", ha="center", va="center", transform=axis.transAxes)
    figure.savefig(path, dpi=100)


def _write_contents(dataset: ReferenceDataset, folder: Path, embeddings: np.ndarray | None) -> None:
    for split in SPLITS:
        write_reference_csv(reference_csv_path(folder, split), dataset.references.get(split, []))
        write_split_file(split_file_path(folder, split), dataset.splits.get(split, []))
    split_of = {name: split for split in SPLITS for name in dataset.splits.get(split, [])}
    with (folder / "identities.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(("image", "identity", "split"))
        for name, label in zip(dataset.names, dataset.identities.tolist(), strict=True):
            writer.writerow((name, int(label), split_of.get(name, "")))
    (folder / "statistics.json").write_text(json.dumps(dataset.statistics, indent=2) + "\n", encoding="utf-8")
    (folder / "statistics.md").write_text(_statistics_markdown(dataset.statistics), encoding="utf-8")
    _plot_references_per_image(dataset.statistics, folder / "references_per_image.png")
    if embeddings is not None:  # kept so the dataset can be rebuilt with other settings without embedding again
        np.save(folder / EMBEDDINGS_FILE, np.asarray(embeddings, dtype=np.float32))
        (folder / NAMES_FILE).write_text("\n".join(dataset.names) + "\n", encoding="utf-8")


def _move_into_place(staging: Path, target: Path) -> None:
    """Rename the finished folder to `target`, keeping any old one until the new one is in place."""
    if not target.exists():
        staging.rename(target)
        return
    retired_parent = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    retired = retired_parent / "previous"
    target.rename(retired)
    try:
        staging.rename(target)
    except BaseException:
        retired.rename(target)
        shutil.rmtree(retired_parent, ignore_errors=True)
        raise
    shutil.rmtree(retired_parent, ignore_errors=True)


def write_reference_dataset(
    dataset: ReferenceDataset, out_dir: Path, overwrite: bool = False, embeddings: np.ndarray | None = None
) -> Path:
    """Write the official FFHQ-Ref layout plus identities, statistics and a plot, all or nothing.

    With `embeddings`, also embeddings.npy and names.txt (row i is line i), the input of
    `refface dataset build --embeddings --names`.

    Everything goes to a temporary sibling folder that is renamed into place at the end, so an
    interrupted run never leaves a half-written dataset (or a half-replaced old one).
    """
    target = Path(out_dir)
    if target.exists() and not target.is_dir():
        raise RefFaceError(f"The output path {target} is a file, not a folder.")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise RefFaceError(f"The output folder {target} is not empty; choose another folder or allow overwriting.")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.building-", dir=target.parent))
    except OSError as error:
        raise RefFaceError(f"Could not create a folder next to {target} ({error.strerror or error}).") from error
    try:
        staging.chmod(0o755)  # mkdtemp makes it private; the dataset is meant to be shared
        _write_contents(dataset, staging, embeddings)
        _move_into_place(staging, target)
    except OSError as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise RefFaceError(f"Could not write the reference dataset to {target} ({error.strerror or error}).") from error
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target
