"""Farthest point sampling over distances: the order in which references show the most variety first."""

from __future__ import annotations

import numpy as np


def fps_from_distances(to_target: np.ndarray, pairwise: np.ndarray) -> np.ndarray:
    """Farthest point order given the candidates' distances to the target and to each other.

    Each pick maximises its minimum distance to the target and all earlier picks; ties go to the
    lowest index (np.argmax returns the first maximum).
    """
    count = to_target.shape[0]
    nearest = np.array(to_target, dtype=np.float64)
    order = np.empty(count, dtype=np.int64)
    for step in range(count):
        pick = int(np.argmax(nearest))
        order[step] = pick
        nearest = np.minimum(nearest, pairwise[pick])
        nearest[pick] = -np.inf  # stays -inf through later minimums, so it is never picked again
    return order
