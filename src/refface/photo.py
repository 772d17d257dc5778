"""Small pieces shared by the whole-photo workflows: pixels as RGB arrays, aligned references, comparisons.

The workflow itself (faces -> people -> references -> restore -> paste back) is `refface.restoration`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from refface.face.alignment import ALIGNED_SIZE
from refface.face.detection import FaceDetector
from refface.face.locate import find_faces


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
