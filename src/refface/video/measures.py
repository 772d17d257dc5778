"""How steady a restored clip is: crop jitter against a known motion, and flicker of the restored face.

Jitter is what a viewer sees as the face swimming in its crop: the frame-to-frame movement of the crop's
corners minus the true movement of the face (known for a synthetic clip), as an RMS in frame pixels. Flicker is
the mean absolute frame-to-frame change of the restored face in aligned space, in 8-bit levels: on a still clip
every change is flicker.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def corner_jitter(corners: np.ndarray, true_corners: np.ndarray) -> float:
    """RMS (pixels) of the frame-to-frame corner motion minus the true motion; both [frames, 4, 2]."""
    corners, true_corners = np.asarray(corners, np.float64), np.asarray(true_corners, np.float64)
    if len(corners) < 2:
        return 0.0
    error = np.diff(corners, axis=0) - np.diff(true_corners, axis=0)
    return float(np.sqrt(np.mean(np.sum(error**2, axis=-1))))


def flicker(crops: Sequence[np.ndarray], region: slice | tuple = (slice(None), slice(None))) -> float:
    """Mean absolute change (8-bit levels) between consecutive crops, inside `region` (default: all of it)."""
    stack = np.stack([np.asarray(crop, np.float32)[region] for crop in crops])
    if len(stack) < 2:
        return 0.0
    return float(np.mean(np.abs(np.diff(stack, axis=0))))


def face_region(size: int) -> tuple[slice, slice]:
    """The middle of an FFHQ crop, where the face is (its outer ring is hair and background)."""
    low, high = round(size * 0.25), round(size * 0.8)
    return slice(low, high), slice(round(size * 0.2), round(size * 0.8))
