"""The photo given back: its output scale, its background, its tone, and every restored face pasted into it.

One place for photos, archives, video frames, the web page and ComfyUI: `compose` takes the original photo (at
its own bit depth), the restored faces and the run's `PhotoOutput`, and returns the finished pixels. At scale 1
with no background model, every pixel outside the faces' masks is the input's own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from refface.face.alignment import AlignedFace
from refface.face.paste import paste_face
from refface.photo.background import Background
from refface.photo.options import AUTO_SCALE_CAP, PhotoOutput
from refface.photo.original import OriginalPhoto
from refface.photo.tone import PhotoTone, photo_tone


@dataclass
class Composed:
    """A finished photo: its pixels (the input's depth), the scale and tone it was given, and notes."""

    pixels: np.ndarray
    scale: float
    tone: PhotoTone
    notes: list[str] = field(default_factory=list)


def choose_scale(
    options: PhotoOutput, shape: tuple[int, int], face_sides: Sequence[float], crop_size: int
) -> tuple[float, list[str]]:
    """The output scale of a photo of `shape` whose restored faces span `face_sides` photo pixels as `crop_size`
    crops: the option's number, or for auto the smallest whole scale at which the largest face keeps its full
    crop size (at most 4); either way no more than --max-megapixels allows."""
    notes = []
    scale = options.scale
    if scale == "auto":
        need = crop_size / max(face_sides) if face_sides else 1.0
        scale = float(min(max(1, math.ceil(need - 1e-6)), AUTO_SCALE_CAP))
        if need > AUTO_SCALE_CAP:
            notes.append(
                f"--upscale auto stops at {AUTO_SCALE_CAP:g}: the largest face would need {need:.1f} to keep all "
                "its restored pixels (give a number up to 8 for more)"
            )
    height, width = shape
    limit = math.sqrt(options.max_megapixels * 1e6 / (height * width))
    if scale > limit:
        capped = max(1.0, math.floor(limit * 100) / 100)
        if capped < scale:
            notes.append(
                f"the output was enlarged {capped:g} times instead of {scale:g}: {scale:g} would exceed "
                f"--max-megapixels {options.max_megapixels:g}"
            )
            scale = capped
    return float(scale), notes


def output_shape(shape: tuple[int, int], scale: float) -> tuple[int, int]:
    return max(1, round(shape[0] * scale)), max(1, round(shape[1] * scale))


def compose(
    original: OriginalPhoto,
    faces: Sequence[tuple[np.ndarray, AlignedFace]],
    options: PhotoOutput,
    background: Background,
    scale: float | None = None,
    tone: PhotoTone | None = None,
) -> Composed:
    """The finished photo from the original and its restored faces ((restored crop, where it goes) pairs).

    `scale` and `tone`: decided already (a video decides them once per clip); None: decided here from this
    photo.
    """
    notes: list[str] = []
    if scale is None:
        sides = [aligned.quad.size for _, aligned in faces]
        crop = max((restored.shape[0] for restored, _ in faces), default=0)
        scale, notes = choose_scale(options, original.pixels.shape[:2], sides, crop)
    if tone is None:
        tone = photo_tone(original.rgb8, options.colour)
        if tone.kept and faces:
            notes.append(tone.describe())
    shape = output_shape(original.pixels.shape[:2], scale)
    if background.uses_model(scale) or shape != original.pixels.shape[:2]:
        canvas = background.draw(original.pixels, shape)
        if tone.kept and background.uses_model(scale):  # a model's colours stay out of a grey photo too
            canvas = _in_tone(canvas, tone, original.top)
    else:
        canvas = original.pixels
    for restored, aligned in faces:
        crop = restored.astype(np.float32)
        if tone.kept:
            crop = tone.apply(crop)
        canvas = paste_face(canvas, crop, aligned, mask=options.mask)
    notes.extend(background.take_notes())
    return Composed(canvas if canvas is not original.pixels else canvas.copy(), scale, tone, notes)


def _in_tone(pixels: np.ndarray, tone: PhotoTone, top: float) -> np.ndarray:
    """Whole-image tone mapping in bands of rows, so a large enlarged photo needs no second full-size float copy."""
    result = np.empty_like(pixels)
    factor = np.float32(255.0 / top)
    for start in range(0, pixels.shape[0], 256):
        rows = pixels[start : start + 256].astype(np.float32) * factor
        mapped = tone.apply(rows) / factor
        result[start : start + 256] = np.clip(np.rint(mapped), 0, top).astype(pixels.dtype)
    return result
