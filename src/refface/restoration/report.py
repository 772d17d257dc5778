"""What a run did to every face: `report.csv`, `report.json` (the same plus the settings) and `people.png`.

The report's first columns are fixed (photo, face, person, references, distance, status), so scripts and
spreadsheets can rely on them; further columns (message, output) explain and point at the files.
`people.png` shows each person with the references chosen for them and some of the faces restored as them,
read back from the output folder, so it is complete after a resumed or sharded run too.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from refface.files import write_text_atomically
from refface.restoration.people import People
from refface.restoration.photo_restorer import ERROR, SKIPPED, PhotoResult
from refface.restoration.video_restorer import VideoResult

COLUMNS = ("photo", "face", "person", "references", "distance", "status", "message", "output")
THUMB = 96
FACES_SHOWN = 8
LABEL_WIDTH = 150


def error_row(name: str, message: str) -> dict:
    """The one row of a photo or clip that could not be read."""
    return _row(name, status=ERROR, message=message)


def _face_row(name: str, face, file: str, message: str) -> dict:
    return _row(
        name,
        face=face.index,
        person=face.person_name,
        references=";".join(face.references),
        distance="" if face.distance is None else round(face.distance, 4),
        status=face.status,
        message=message,
        output=file,
    )


def photo_rows(name: str, result: PhotoResult, face_files: Sequence[str]) -> list[dict]:
    """The report rows of one photo: one per face, or one for the photo when it had none (or failed)."""
    if result.error is not None:
        return [error_row(name, result.error)]
    if not result.faces:
        return [_row(name, status=SKIPPED, message="; ".join(result.notes))]
    faces = [
        _face_row(name, face, file if face.restored is not None else "", face.message)
        for face, file in zip(result.faces, face_files, strict=True)
    ]
    # faces seen but not restored get a row each (no number: they are not among the photo's faces)
    return faces + [
        _row(name, status=SKIPPED, message=f"the face at {face.where}: {face.reason}") for face in result.dropped
    ]


def track_rows(name: str, result: VideoResult, face_files: Sequence[str]) -> list[dict]:
    """The report rows of one clip: one per face track (`face` is the track's number, the message names its
    frames and the restored clip), or one for the clip when no face was restored."""
    video = f"{result.output.parent.name}/{result.output.name}" if result.output is not None else ""
    if not result.tracks:
        return [_row(name, status=SKIPPED, message="; ".join(result.notes))]
    return [
        _face_row(name, track.face, file, "; ".join(part for part in (track.frames, video, track.face.message) if part))
        for track, file in zip(result.tracks, face_files, strict=True)
    ]


def _row(photo: str, **values) -> dict:
    row = dict.fromkeys(COLUMNS, "")
    row.update(photo=photo, **values)
    return row


def write_report(folder: Path, rows: list[dict], settings: dict, people: People) -> None:
    """report.csv and report.json in `folder`."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomically(folder / "report.csv", buffer.getvalue())
    described = [{"name": p.name, "references": p.reference_names, "labels": p.labels} for p in people]
    document = {"settings": settings, "people": described, "faces": rows}
    write_text_atomically(folder / "report.json", json.dumps(document, indent=1))


def _thumbnail(image: Image.Image) -> Image.Image:
    return image.convert("RGB").resize((THUMB, THUMB), Image.Resampling.LANCZOS)


def people_sheet(folder: Path, rows: list[dict], people: People) -> Image.Image | None:
    """One row per person: name | references | faces restored as them (at most FACES_SHOWN); None if nobody."""
    if not len(people):
        return None
    restored: dict[str, list[Path]] = {}
    for row in rows:
        if row["person"] and row["output"]:
            restored.setdefault(row["person"], []).append(folder / row["output"])
    columns = max(len(p.references) for p in people) + 1 + FACES_SHOWN
    sheet = Image.new("RGB", (LABEL_WIDTH + columns * THUMB, len(people) * (THUMB + 8)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for line, person in enumerate(people):
        top = line * (THUMB + 8)
        faces = restored.get(person.name, [])
        draw.text((6, top + 6), person.name, fill=(0, 0, 0))
        draw.text((6, top + 24), f"{len(person.references)} reference(s)", fill=(90, 90, 90))
        draw.text((6, top + 40), f"{len(faces)} face(s) restored", fill=(90, 90, 90))
        for column, crop in enumerate(person.references):
            sheet.paste(_thumbnail(Image.fromarray(crop)), (LABEL_WIDTH + column * THUMB, top))
        start = LABEL_WIDTH + (len(person.references) + 1) * THUMB
        for column, path in enumerate(faces[:FACES_SHOWN]):
            if path.is_file():
                with Image.open(path) as face:
                    sheet.paste(_thumbnail(face), (start + column * THUMB, top))
    return sheet


def comparison_image(
    lq: np.ndarray | Image.Image,
    restored: np.ndarray | Image.Image,
    references: Sequence[np.ndarray | Image.Image] = (),
) -> Image.Image:
    """LQ crop | restored crop side by side, with the references in a strip underneath (the cmp/ pictures)."""
    lq_image = Image.fromarray(np.asarray(lq)).convert("RGB")
    size = lq_image.width
    top = [
        lq_image,
        Image.fromarray(np.asarray(restored)).convert("RGB").resize((size, size), Image.Resampling.LANCZOS),
    ]
    thumb = (2 * size) // max(len(references), 4) if references else 0
    canvas = Image.new("RGB", (2 * size, size + thumb), (255, 255, 255))
    for column, image in enumerate(top):
        canvas.paste(image, (column * size, 0))
    for column, reference in enumerate(references):
        small = Image.fromarray(np.asarray(reference)).convert("RGB").resize((thumb, thumb), Image.Resampling.LANCZOS)
        canvas.paste(small, (column * thumb, size))
    return canvas


def before_after(before: Image.Image, after: Image.Image) -> Image.Image:
    """A photo as it was and as refface gave it back, side by side under a label each."""
    band = 28
    canvas = Image.new("RGB", (before.width + after.width, max(before.height, after.height) + band), (255, 255, 255))
    canvas.paste(before.convert("RGB"), (0, band))
    canvas.paste(after.convert("RGB"), (before.width, band))
    draw = ImageDraw.Draw(canvas)
    draw.text((8, 8), "before", fill=(0, 0, 0))
    draw.text((before.width + 8, 8), "after (refface)", fill=(0, 0, 0))
    return canvas
