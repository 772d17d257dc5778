"""Small real-photo test images: crops of `skimage.data.astronaut()` (NASA, public domain)."""

from __future__ import annotations

from functools import cache

import cv2
import numpy as np


@cache
def _astronaut() -> np.ndarray:
    from skimage import data

    return data.astronaut()


def astronaut(size: int | tuple[int, int] = 128) -> np.ndarray:
    """The photo area-resized to size x size (or (height, width)), a fresh uint8 RGB copy."""
    height, width = (size, size) if isinstance(size, int) else size
    return cv2.resize(_astronaut(), (width, height), interpolation=cv2.INTER_AREA)


def crop(top: int, left: int, size: int = 64) -> np.ndarray:
    """A full-resolution crop, so different crops hold different detail."""
    return _astronaut()[top : top + size, left : left + size].copy()
