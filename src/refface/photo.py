"""Restoring faces in whole photos: align each face, restore the crops, paste them back.

This is the real-photo workflow of GFPGAN/CodeFormer-style tools around a reference-based model:
the pipeline only ever sees FFHQ-aligned crops, and the photo outside the faces stays untouched.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from refface.face.alignment import ALIGNED_SIZE, AlignedFace
from refface.face.detection import FaceDetector
from refface.face.locate import find_faces
from refface.face.paste import paste_face

Restorer = Callable[[list[Image.Image]], list[Image.Image]]


@dataclass
class RestoredFace:
    """One face of the photo: its aligned crop (the model's input) and the restored crop."""

    aligned: AlignedFace
    restored: np.ndarray


@dataclass
class PhotoRestoration:
    """The photo with restored faces pasted in, the per-face crops, and notes for the user."""

    photo: np.ndarray
    faces: list[RestoredFace]
    notes: list[str] = field(default_factory=list)


def restore_faces(
    photo: np.ndarray, faces: Sequence[AlignedFace], restore: Restorer, batch_size: int = 4
) -> tuple[np.ndarray, list[RestoredFace]]:
    """Restore aligned crops with `restore` in batches and paste each back into (a copy of) `photo`."""
    crops = [Image.fromarray(face.image) for face in faces]
    restored: list[np.ndarray] = []
    for start in range(0, len(crops), batch_size):
        restored.extend(np.asarray(image.convert("RGB")) for image in restore(crops[start : start + batch_size]))
    result = photo
    for face, crop in zip(faces, restored, strict=True):
        result = paste_face(result, crop, face)
    return result, [RestoredFace(face, crop) for face, crop in zip(faces, restored, strict=True)]


def restore_photo(
    photo: Image.Image | np.ndarray,
    restore: Restorer,
    detector: FaceDetector,
    select: str | int = "all",
    source: str = "the photo",
    batch_size: int = 4,
    aligned_size: int = ALIGNED_SIZE,
) -> PhotoRestoration:
    """Find the chosen faces, restore their crops with `restore`, and paste them back.

    `restore` maps aligned crops to restored crops, e.g. `lambda crops: pipe(crops, refs).images`.
    """
    pixels = as_rgb_array(photo)
    search = find_faces(pixels, detector, select, aligned_size, source)
    result, faces = restore_faces(pixels, search.faces, restore, batch_size)
    return PhotoRestoration(result, faces, search.notes)


def as_rgb_array(photo: Image.Image | np.ndarray) -> np.ndarray:
    return np.asarray(photo.convert("RGB") if isinstance(photo, Image.Image) else photo, dtype=np.uint8)


def align_references(
    images: Sequence[Image.Image], sources: Sequence[str], detector: FaceDetector, aligned_size: int = ALIGNED_SIZE
) -> tuple[list[np.ndarray], list[str]]:
    """The largest face of each reference photo as an aligned crop, plus notes about ambiguous photos."""
    crops, notes = [], []
    for image, source in zip(images, sources, strict=True):
        search = find_faces(as_rgb_array(image), detector, "largest", aligned_size, source)
        crops.append(search.faces[0].image)
        notes.extend(search.notes)
    return crops, notes


def comparison_image(
    lq: np.ndarray | Image.Image,
    restored: np.ndarray | Image.Image,
    references: Sequence[np.ndarray | Image.Image] = (),
) -> Image.Image:
    """LQ crop | restored crop side by side, with the references in a strip underneath."""
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
