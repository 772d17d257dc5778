"""The resumable folder job behind `refface degrade`: HQ images in, PNG LQ images plus a params CSV out.

Image i of the list is degraded with `sample_rng(seed, i)`, so the list order (e.g. a benchmark
CSV) defines the result and any image can be regenerated alone. Each PNG is written atomically
and its params row appended to a partial JSONL file as soon as it exists; a rerun skips what is
recorded there, and the CSV appears (atomically) only when every image is done. Interrupted and
uninterrupted runs therefore produce the same bytes.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from refface.data.base import Degradation, Params
from refface.data.degradations import degradation_by_name, degrade
from refface.errors import RefFaceError, require_file
from refface.files import write_text_atomically
from refface.imaging import load_image, resize_square, save_image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
PARTIAL_NAME = ".degradation_params.partial.jsonl"
FIXED_COLUMNS = ("index", "image", "preset", "seed")


def list_images(folder: Path, recursive: bool = False) -> list[str]:
    """Sorted names of the image files directly inside `folder`, or with `recursive` of every image below it as
    paths relative to it (FFHQ keeps its images in numbered subfolders)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise RefFaceError(f"The image folder {folder} does not exist or is not a folder.")
    found = folder.rglob("*") if recursive else folder.iterdir()
    images = (p for p in found if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    names = sorted(p.relative_to(folder).as_posix() for p in images)
    if not names:
        raise RefFaceError(f"The image folder {folder} has no {'/'.join(s[1:] for s in IMAGE_SUFFIXES)} images.")
    return names


def _output_name(name: str) -> str:
    return Path(name).stem + ".png"


def _check_names(names: Sequence[str], in_dir: Path) -> None:
    if not names:
        raise RefFaceError(f"No images were given to degrade from {in_dir}.")
    seen: dict[str, str] = {}
    for name in names:
        key = _output_name(name).casefold()
        if key in seen:
            raise RefFaceError(
                f"The images {seen[key]} and {name} in {in_dir} would both be written as {_output_name(name)}."
            )
        seen[key] = name
        require_file(in_dir / name, "image")


def _header(degradation: Degradation, seed: int, size: int | None, count: int) -> dict:
    """What a partial run must share with this one for its images to be reused."""
    # A dataclass repr lists every range; other objects only have a stable type name.
    config = repr(degradation) if dataclasses.is_dataclass(degradation) else type(degradation).__qualname__
    return {"preset": degradation.name, "seed": seed, "size": size, "count": count, "config": config}


def _read_partial(partial: Path, header: dict, names: Sequence[str]) -> dict[int, dict]:
    """Rows of an earlier interrupted run, after checking it used the same settings and image list."""
    lines = partial.read_text(encoding="utf-8").splitlines()
    try:
        recorded = json.loads(lines[0]) if lines else {}
    except json.JSONDecodeError:
        recorded = {}
    recorded = recorded if isinstance(recorded, dict) else {}
    described = {"preset": "preset", "seed": "seed", "size": "size", "count": "number of images"}
    for key, what in [*((k, f"a different {w}") for k, w in described.items()), ("config", "different settings")]:
        if recorded.get(key) != header[key]:
            values = "" if key == "config" else f" ({recorded.get(key)!r}, now {header[key]!r})"
            raise RefFaceError(
                f"The unfinished run in {partial.parent} used {what}{values}; pass --overwrite to start again."
            )
    rows: dict[int, dict] = {}
    for line in lines[1:]:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # the line being written when the run was killed
        index = row.get("index")
        if not isinstance(index, int) or not 0 <= index < len(names) or row.get("image") != names[index]:
            raise RefFaceError(
                f"The unfinished run in {partial.parent} used a different image list; pass --overwrite to start again."
            )
        rows[index] = row
    return rows


def _csv_text(rows: list[dict], degradation: Degradation, seed: int) -> str:
    keys = sorted({key for row in rows for key in row["params"]} - set(FIXED_COLUMNS))
    lines: list[list[object]] = [[*FIXED_COLUMNS, *keys]]
    for row in rows:
        params: Params = row["params"]
        lines.append([row["index"], row["image"], degradation.name, seed, *(params.get(key, "") for key in keys)])
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(lines)
    return buffer.getvalue()


def degrade_images(
    names: Sequence[str],
    in_dir: Path,
    out_dir: Path,
    degradation: Degradation | str,
    seed: int,
    size: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    params_name: str = "degradation_params.csv",
) -> Path:
    """Degrade `names` (files in `in_dir`) into OUT_DIR/<stem>.png and return the params CSV path.

    Image index = position in `names`. `size` first resizes each HQ image to size x size. A run
    that was interrupted resumes where it stopped; a finished OUT_DIR needs `overwrite`.
    """
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    chosen = degradation_by_name(degradation) if isinstance(degradation, str) else degradation
    if not in_dir.is_dir():
        raise RefFaceError(f"The image folder {in_dir} does not exist or is not a folder.")
    if out_dir.resolve() == in_dir.resolve():
        raise RefFaceError(f"The output folder {out_dir} is the input folder; refface never overwrites its inputs.")
    if size is not None and (int(size) != size or size < 1):
        raise RefFaceError(f"The image size must be a positive integer, not {size}.")
    if int(seed) != seed or seed < 0:
        raise RefFaceError(f"The seed must be a non-negative integer, not {seed}.")
    seed = int(seed)
    _check_names(names, in_dir)
    inputs = {(in_dir / name).resolve() for name in names}
    clash = next((name for name in names if (out_dir / _output_name(name)).resolve() in inputs), None)
    if clash is not None:
        raise RefFaceError(f"The output for {clash} would overwrite an input image; choose another output folder.")
    csv_path, partial = out_dir / params_name, out_dir / PARTIAL_NAME
    if out_dir.exists() and not out_dir.is_dir():
        raise RefFaceError(f"The output folder {out_dir} is a file.")
    if csv_path.exists() and not overwrite:
        raise RefFaceError(f"The degraded images in {out_dir} already exist ({csv_path.name}); pass --overwrite.")
    out_dir.mkdir(parents=True, exist_ok=True)
    # An overwrite that is interrupted must not leave the old CSV vouching for a half-new folder.
    csv_path.unlink(missing_ok=True)
    header = _header(chosen, seed, size, len(names))
    rows = {} if overwrite or not partial.exists() else _read_partial(partial, header, names)
    done = {index for index in rows if (out_dir / _output_name(names[index])).is_file()}
    # Rewrite the partial file cleanly (dropping a torn last line) before appending to it.
    kept = [json.dumps(header)] + [json.dumps(rows[index]) for index in sorted(done)]
    write_text_atomically(partial, "\n".join(kept) + "\n")
    with (
        partial.open("a", encoding="utf-8") as journal,
        tqdm(total=len(names), initial=len(done), desc="degrading", unit="image", disable=not progress) as bar,
    ):
        for index, name in enumerate(names):
            if index in done:
                continue
            pixels = np.asarray(load_image(in_dir / name))
            if size is not None:
                pixels = resize_square(pixels, size)
            sample = degrade(pixels, chosen, seed, index)
            save_image(Image.fromarray(sample.image), out_dir / _output_name(name))
            rows[index] = {"index": index, "image": name, "params": sample.params}
            journal.write(json.dumps(rows[index]) + "\n")
            journal.flush()
            bar.update(1)
    write_text_atomically(csv_path, _csv_text([rows[i] for i in range(len(names))], chosen, seed))
    partial.unlink(missing_ok=True)
    return csv_path
