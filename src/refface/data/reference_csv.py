"""The released FFHQ-Ref file formats: reference-mapping CSVs and identity-based split lists.

The official layout is
    reference_mapping/{train,val,test}_references.csv   header `gt_image,ref_image`, the second
                                                        field a Python list literal read with ast.literal_eval
    id_based_ffhq_split/{train,val,test}_image.txt       one image name per line
We write exactly this, so files built here load in the official code and vice versa.
"""

from __future__ import annotations

import ast
import csv
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from refface.errors import RefFaceError, require_file
from refface.files import atomic_output

SPLITS = ("train", "val", "test")
REFERENCE_FOLDER = "reference_mapping"
SPLIT_FOLDER = "id_based_ffhq_split"
CSV_COLUMNS = ("gt_image", "ref_image")


def reference_csv_path(folder: str | Path, split: str) -> Path:
    """Where a split's reference CSV lives in an FFHQ-Ref style folder."""
    return Path(folder) / REFERENCE_FOLDER / f"{split}_references.csv"


def split_file_path(folder: str | Path, split: str) -> Path:
    """Where a split's image list lives in an FFHQ-Ref style folder."""
    return Path(folder) / SPLIT_FOLDER / f"{split}_image.txt"


@dataclass(frozen=True)
class ReferenceEntry:
    """One target image and its references, most informative first (FPS order)."""

    gt_image: str
    ref_images: tuple[str, ...]


@dataclass
class ReferenceFolder:
    """What an FFHQ-Ref style folder holds; a split whose file is absent is an empty list."""

    folder: Path
    references: dict[str, list[ReferenceEntry]] = field(default_factory=dict)
    images: dict[str, list[str]] = field(default_factory=dict)

    def summary(self) -> str:
        """A few lines per split: targets, references per target, images listed."""
        lines = [f"{self.folder}:"]
        for split in SPLITS:
            entries = self.references.get(split, [])
            counts = [len(entry.ref_images) for entry in entries]
            refs = (
                f"{min(counts)}-{max(counts)} references per target (mean {sum(counts) / len(counts):.2f})"
                if counts
                else "no reference list"
            )
            lines.append(f"  {split}: {len(entries)} targets, {refs}; {len(self.images.get(split, []))} images listed")
        return "\n".join(lines)


def _shorten(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_entry(gt_image: str, refs: object, source: Path, line: int) -> ReferenceEntry:
    """The entry if its fields follow the official format; otherwise the one-sentence error."""
    where = f"Line {line} of {source}"
    if not isinstance(gt_image, str) or not gt_image:
        raise RefFaceError(f"{where} has no gt_image (target image name).")
    if not isinstance(refs, list | tuple):
        raise RefFaceError(f"{where} has a ref_image value that is not a list of image names, such as ['00012.png'].")
    if not refs:
        raise RefFaceError(f"{where} lists no reference images for {gt_image}.")
    for ref in refs:
        if not isinstance(ref, str) or not ref:
            raise RefFaceError(f"{where} has a reference {_shorten(repr(ref))} that is not an image name.")
        if ref == gt_image:
            raise RefFaceError(f"{where} lists the target {gt_image} as its own reference.")
    return ReferenceEntry(gt_image, tuple(refs))


def _parse_ref_list(text: str | None, source: Path, line: int) -> object:
    if text is None or not text.strip():
        raise RefFaceError(f"Line {line} of {source} has no ref_image value.")
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as error:
        raise RefFaceError(
            f"Line {line} of {source} has a ref_image value {_shorten(text)!r} that is not a Python list literal "
            "such as ['00012.png', '00345.png']."
        ) from error


def read_reference_csv(path: str | Path) -> list[ReferenceEntry]:
    """Entries of an official-format reference CSV, validated line by line."""
    source = require_file(path, "reference CSV")
    entries: list[ReferenceEntry] = []
    first_line: dict[str, int] = {}
    line = 1
    try:
        with source.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            if reader.fieldnames is None:
                raise RefFaceError(f"The reference CSV {source} is empty; it needs the header gt_image,ref_image.")
            missing = [column for column in CSV_COLUMNS if column not in reader.fieldnames]
            if missing:
                raise RefFaceError(
                    f"The reference CSV {source} has no {' or '.join(missing)} column in its header "
                    f"{','.join(str(name) for name in reader.fieldnames)!r} (expected gt_image,ref_image)."
                )
            for row in reader:
                line = reader.line_num
                gt_image = (row.get("gt_image") or "").strip()
                refs = _parse_ref_list(row.get("ref_image"), source, line)
                entry = _check_entry(gt_image, refs, source, line)
                if gt_image in first_line:
                    raise RefFaceError(
                        f"Line {line} of {source} repeats the target {gt_image}, already listed on line "
                        f"{first_line[gt_image]}."
                    )
                first_line[gt_image] = line
                entries.append(entry)
    except UnicodeDecodeError as error:
        raise RefFaceError(f"The reference CSV {source} is not UTF-8 text ({error.reason}).") from error
    except csv.Error as error:
        raise RefFaceError(f"The reference CSV {source} is not valid CSV near line {line} ({error}).") from error
    return entries


def write_reference_csv(path: str | Path, entries: Iterable[ReferenceEntry]) -> Path:
    """Write entries in the official format: `str(list)` in a quoted field, readable by ast.literal_eval (atomically:
    a reader never sees half a file)."""
    target = Path(path)
    checked = [
        _check_entry(entry.gt_image, list(entry.ref_images), target, line)
        for line, entry in enumerate(entries, start=2)
    ]
    seen: set[str] = set()
    for line, entry in enumerate(checked, start=2):
        if entry.gt_image in seen:
            raise RefFaceError(f"Line {line} of {target} would repeat the target {entry.gt_image}.")
        seen.add(entry.gt_image)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(target, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for entry in checked:
            writer.writerow([entry.gt_image, str(list(entry.ref_images))])
    return target


def read_split_file(path: str | Path) -> list[str]:
    """Image names of a split list, one per line; blank lines are ignored, repeats are an error."""
    source = require_file(path, "split file")
    try:
        text = source.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise RefFaceError(f"The split file {source} is not UTF-8 text ({error.reason}).") from error
    names: list[str] = []
    first_line: dict[str, int] = {}
    for line, raw in enumerate(text.splitlines(), start=1):
        name = raw.strip()
        if not name:
            continue
        if name in first_line:
            raise RefFaceError(f"Line {line} of {source} repeats {name}, already listed on line {first_line[name]}.")
        first_line[name] = line
        names.append(name)
    return names


def write_split_file(path: str | Path, names: Sequence[str]) -> Path:
    """One image name per line, as in the released id_based_ffhq_split files."""
    target = Path(path)
    for name in names:
        if not name or name != name.strip() or "\n" in name or "\r" in name:
            raise RefFaceError(f"The image name {name!r} cannot be written to the split file {target}.")
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise RefFaceError(f"The split file {target} would list the image {name} twice.")
        seen.add(name)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("".join(f"{name}\n" for name in names), encoding="utf-8")
    return target


def _check_disjoint(lists: dict[str, list[str]], describe: Callable[[str], Path]) -> None:
    owner: dict[str, str] = {}
    for split, names in lists.items():
        for name in names:
            if name in owner:
                raise RefFaceError(
                    f"The image {name} is in both {describe(owner[name])} and {describe(split)}, "
                    "so the splits are not disjoint."
                )
            owner[name] = split


def read_reference_dataset(folder: str | Path) -> ReferenceFolder:
    """All splits of an FFHQ-Ref style folder (the official release or one built here).

    A split whose file is missing reads as empty, so a user set without a test split loads; a
    folder with neither `reference_mapping/` nor `id_based_ffhq_split/` is rejected.
    """
    root = Path(folder)
    if not root.exists():
        raise RefFaceError(f"The reference dataset folder {root} does not exist.")
    if not root.is_dir():
        raise RefFaceError(f"The reference dataset path {root} is a file, not a folder.")
    has_mapping = (root / REFERENCE_FOLDER).is_dir()
    has_splits = (root / SPLIT_FOLDER).is_dir()
    if not (has_mapping or has_splits):
        raise RefFaceError(
            f"The folder {root} has neither {REFERENCE_FOLDER}/ nor {SPLIT_FOLDER}/, so it is not an FFHQ-Ref "
            "style dataset."
        )
    result = ReferenceFolder(folder=root)
    for split in SPLITS:
        csv_path = reference_csv_path(root, split)
        result.references[split] = read_reference_csv(csv_path) if csv_path.is_file() else []
        list_path = split_file_path(root, split)
        result.images[split] = read_split_file(list_path) if list_path.is_file() else []
    if has_mapping and not any(reference_csv_path(root, split).is_file() for split in SPLITS):
        raise RefFaceError(f"The folder {root / REFERENCE_FOLDER} contains none of train/val/test_references.csv.")
    if has_splits and not any(split_file_path(root, split).is_file() for split in SPLITS):
        raise RefFaceError(f"The folder {root / SPLIT_FOLDER} contains none of train/val/test_image.txt.")
    targets = {split: [entry.gt_image for entry in entries] for split, entries in result.references.items()}
    _check_disjoint(targets, lambda split: reference_csv_path(root, split))
    _check_disjoint(result.images, lambda split: split_file_path(root, split))
    return result
