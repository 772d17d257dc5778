"""A picture of a benchmark folder: LQ | references | each method | GT, for a few examples spread over the set.

Numbers say how much better a method is; the sheet shows how, and catches what averages hide
(a colour cast, a wrong person, a method that silently ignores its references).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from refface.evaluation.benchmark_report import main_count, read_summaries
from refface.evaluation.paper_sets import BenchmarkCase
from refface.imaging import load_image, save_image

SHOWN_REFERENCES = 3
TILE = 128
HEADER = 16


def spread_examples(count: int, examples: int) -> list[int]:
    """`examples` indices spread evenly over `count` cases (first and last included), without repeats."""
    if count < 1 or examples < 1:
        return []
    return sorted({int(round(i)) for i in np.linspace(0, count - 1, min(examples, count))})


def _tile(path: Path | None) -> Image.Image:
    if path is None or not path.is_file():
        return Image.new("RGB", (TILE, TILE), (200, 200, 200))
    return load_image(path).resize((TILE, TILE), Image.Resampling.LANCZOS)


def contact_sheet(columns: Sequence[tuple[str, Sequence[Path | None]]]) -> Image.Image:
    """A grid with one labelled column per (label, one path per row); missing files are grey tiles."""
    rows = max((len(paths) for _, paths in columns), default=0)
    sheet = Image.new("RGB", (TILE * len(columns), HEADER + TILE * rows), "white")
    draw = ImageDraw.Draw(sheet)
    for x, (label, paths) in enumerate(columns):
        draw.text((x * TILE + 3, 2), label[:21], fill="black")
        for y, path in enumerate(paths):
            sheet.paste(_tile(path), (x * TILE, HEADER + y * TILE))
    return sheet


def write_contact_sheet(set_folder: Path, cases: Sequence[BenchmarkCase], main_refs: int, examples: int) -> Path:
    """OUT/<set>/contact_sheet.png over every method in the folder, each at its main-table reference count."""
    chosen = [cases[i] for i in spread_examples(len(cases), examples)]
    columns: list[tuple[str, list[Path | None]]] = [("LQ", [c.lq for c in chosen])]
    for number in range(SHOWN_REFERENCES):
        columns.append((f"ref {number + 1}", [c.refs[number] if number < len(c.refs) else None for c in chosen]))
    for method, counts in sorted(read_summaries(set_folder).items()):
        count = main_count(counts, main_refs)
        folder = set_folder / method / f"refs-{count}" / "images"
        columns.append((f"{method} ({count})", [folder / f"{c.name}.png" for c in chosen]))
    columns.append(("GT", [c.gt for c in chosen]))
    return save_image(contact_sheet(columns), set_folder / "contact_sheet.png")
