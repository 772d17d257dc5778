"""Real face photos that ship with packages, placed into larger scenes for the face tests.

`skimage.data.astronaut()` (Eileen Collins, NASA, public domain) and matplotlib's
`grace_hopper.jpg` (US Navy, public domain) are two different people; every other "photo" here is
derived from them with a known transform, so the tests know where the face must end up.
"""

from __future__ import annotations

from functools import cache

import cv2
import numpy as np
from PIL import Image

BACKGROUND = (70, 80, 90)


@cache
def _astronaut() -> np.ndarray:
    from skimage import data

    return data.astronaut()


@cache
def _grace_hopper() -> np.ndarray:
    from matplotlib import cbook

    with Image.open(cbook.get_sample_data("grace_hopper.jpg")) as image:
        return np.asarray(image.convert("RGB"))


def astronaut() -> np.ndarray:
    return _astronaut().copy()


def grace_hopper() -> np.ndarray:
    return _grace_hopper().copy()


def placement(image: np.ndarray, angle: float, scale: float, centre: tuple[float, float]) -> np.ndarray:
    """2x3 matrix rotating by `angle` degrees and scaling about the image centre, which lands on `centre`."""
    height, width = image.shape[:2]
    matrix = cv2.getRotationMatrix2D((width / 2 - 0.5, height / 2 - 0.5), angle, scale)
    matrix[:, 2] += np.array(centre, dtype=np.float64) - (width / 2 - 0.5, height / 2 - 0.5)
    return matrix


def place(
    image: np.ndarray,
    angle: float = 0.0,
    scale: float = 1.0,
    centre: tuple[float, float] = (320, 280),
    canvas: tuple[int, int] = (640, 560),
) -> tuple[np.ndarray, np.ndarray]:
    """The photo rotated/scaled into a plain canvas (width, height), and the matrix that did it."""
    matrix = placement(image, angle, scale, centre)
    scene = cv2.warpAffine(
        image, matrix, canvas, flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_CONSTANT, borderValue=BACKGROUND
    )
    return scene, matrix


def side_light(image: np.ndarray, strength: float = 0.45) -> np.ndarray:
    """A different-looking photo of the same face: light falling from one side."""
    ramp = np.linspace(1.0 - strength, 1.0 + strength * 0.3, image.shape[1])[None, :, None]
    return np.clip(image * ramp, 0, 255).astype(np.uint8)


def degrade(image: np.ndarray, factor: int = 4, sigma: float = 1.0, quality: int = 60) -> np.ndarray:
    """Blur, downsample, JPEG and upsample back: a moderately degraded old photo."""
    import io

    blurred = cv2.GaussianBlur(image, (0, 0), sigma)
    height, width = image.shape[:2]
    small = cv2.resize(blurred, (width // factor, height // factor), interpolation=cv2.INTER_AREA)
    buffer = io.BytesIO()
    Image.fromarray(small).save(buffer, format="JPEG", quality=quality)
    decoded = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    return cv2.resize(decoded, (width, height), interpolation=cv2.INTER_CUBIC)


def group_photo(quality_factor: int = 3) -> np.ndarray:
    """Grace Hopper and the astronaut side by side, degraded: face 0 (the larger) is Hopper, face 1 the astronaut."""
    left, _ = place(astronaut(), 0, 0.9, (260, 280), canvas=(1040, 560))
    right, _ = place(grace_hopper(), 0, 0.75, (780, 280), canvas=(1040, 560))
    scene = left.copy()
    scene[:, 520:] = right[:, 520:]
    return degrade(scene, quality_factor)
