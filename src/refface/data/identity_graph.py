"""Who is the same person: close ArcFace pairs, their connected components, and reference ordering.

FFHQ has no identity labels, so FFHQ-Ref links every pair of images whose ArcFace cosine distance
is under a threshold and takes connected components as identities. With 70,000 images the full
distance matrix would take ~20 GB, so pairs are found a block of rows at a time.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from refface.errors import RefFaceError
from refface.face.farthest_point import fps_from_distances


def _row(index: int, row_names: Sequence[str] | None) -> str:
    if row_names is not None and index < len(row_names):
        return f"{index} ({row_names[index]})"
    return str(index)


def unit_embeddings(
    embeddings: np.ndarray, source: str | None = None, row_names: Sequence[str] | None = None
) -> np.ndarray:
    """L2-normalised float32 copy of `embeddings`, after checking they can define cosine distances."""
    where = f" in {source}" if source else ""
    array = np.asarray(embeddings)
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise RefFaceError(
            f"The embeddings{where} must be a non-empty 2-D array (one row per image), got shape {array.shape}."
        )
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise RefFaceError(f"The embeddings{where} must be real numbers, got dtype {array.dtype}.")
    unit = array.astype(np.float32, copy=True)
    finite = np.isfinite(unit).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise RefFaceError(
            f"Embedding row {_row(bad[0], row_names)}{where} contains NaN or infinite values ({bad.size} such rows)."
        )
    norms = np.linalg.norm(unit, axis=1)
    zero = norms <= np.finfo(np.float32).tiny
    if zero.any():
        bad = np.flatnonzero(zero)
        raise RefFaceError(
            f"Embedding row {_row(bad[0], row_names)}{where} has zero length, so it has no direction "
            f"({bad.size} such rows)."
        )
    unit /= norms[:, None]
    return unit


def close_pairs(
    embeddings: np.ndarray,
    threshold: float,
    block_size: int = 4096,
    source: str | None = None,
    max_pairs: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows i < j and cosine distances of every pair closer than `threshold`.

    Only `block_size` rows are compared with the rest at a time, so the peak memory is about
    block_size x N float32 (plus N x D for the normalised copy) rather than N x N. `max_pairs`
    guards against thresholds so large that the pair list itself would not fit in memory.
    """
    if not 0 < threshold < 2:
        raise RefFaceError(f"The distance threshold must be between 0 and 2 (exclusive), got {threshold}.")
    if block_size < 1:
        raise RefFaceError(f"The block size must be at least 1, got {block_size}.")
    unit = unit_embeddings(embeddings, source)
    count = unit.shape[0]
    # Select on similarity (no distance array per block), with slack; the exact test is done on the hits.
    min_similarity = np.float32(1.0 - threshold - 1e-5)
    found_rows, found_cols, found_dists = [], [], []
    total = 0
    for start in range(0, count, block_size):
        stop = min(start + block_size, count)
        similarity = unit[start:stop] @ unit[start:].T  # columns from `start` on: only j >= i matters
        local_rows, local_cols = np.nonzero(similarity >= min_similarity)
        upper = local_cols > local_rows
        local_rows, local_cols = local_rows[upper], local_cols[upper]
        distances = (1.0 - similarity[local_rows, local_cols].astype(np.float64)).astype(np.float32)
        keep = distances < threshold
        del similarity
        found_rows.append(local_rows[keep].astype(np.int64) + start)
        found_cols.append(local_cols[keep].astype(np.int64) + start)
        found_dists.append(distances[keep])
        total += int(keep.sum())
        if max_pairs is not None and total > max_pairs:
            where = f" in {source}" if source else ""
            raise RefFaceError(
                f"The threshold {threshold} links more than {max_pairs} pairs of images{where}; "
                "use a smaller threshold."
            )
    return np.concatenate(found_rows), np.concatenate(found_cols), np.concatenate(found_dists)


def smallest_distance(embeddings: np.ndarray, block_size: int = 4096) -> float:
    """The smallest cosine distance between two different rows, to suggest a workable threshold."""
    unit = unit_embeddings(embeddings)
    count = unit.shape[0]
    if count < 2:
        return float("nan")
    best = np.inf
    for start in range(0, count - 1, block_size):
        stop = min(start + block_size, count - 1)
        similarity = unit[start:stop] @ unit[start:].T
        # Hide the diagonal and everything left of it (j <= i).
        similarity[np.tril(np.ones(similarity.shape, dtype=bool))] = -np.inf
        best = min(best, 1.0 - float(similarity.max()))
    return best


def identities_from_pairs(count: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Identity label per image: connected components of the pair graph, numbered by first appearance.

    Renumbering makes the labels depend only on the data, not on scipy's traversal order.
    """
    rows = np.asarray(rows, dtype=np.int64)
    cols = np.asarray(cols, dtype=np.int64)
    if rows.shape != cols.shape or rows.ndim != 1:
        raise ValueError(f"rows and cols must be 1-D arrays of the same length, got {rows.shape} and {cols.shape}")
    if rows.size and (min(rows.min(), cols.min()) < 0 or max(rows.max(), cols.max()) >= count):
        raise ValueError(f"pair indices must lie in [0, {count})")
    graph = coo_matrix((np.ones(rows.size, dtype=np.int8), (rows, cols)), shape=(count, count))
    _, labels = connected_components(graph, directed=False)
    return renumber_by_first_appearance(labels)


def renumber_by_first_appearance(labels: np.ndarray | list) -> np.ndarray:
    """Labels 0, 1, 2, ... in the order their groups first occur, whatever the input labels were."""
    _, first_index, inverse = np.unique(np.asarray(labels), return_index=True, return_inverse=True)
    new_label = np.empty(first_index.size, dtype=np.int64)
    new_label[np.argsort(first_index, kind="stable")] = np.arange(first_index.size)
    return new_label[inverse.reshape(-1)]


def cosine_distances(unit: np.ndarray) -> np.ndarray:
    """Pairwise cosine distances (float64) of already-normalised rows; meant for one identity at a time."""
    rows = np.asarray(unit, dtype=np.float64)
    return np.clip(1.0 - rows @ rows.T, 0.0, 2.0)


def farthest_point_order(target: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Indices of `candidates` in farthest-point-sampling order, starting from the target.

    Putting the most different references first lets a model that reads only the first k
    references still see the widest variety of poses and looks.
    """
    target = np.asarray(target, dtype=np.float64).reshape(1, -1)
    candidates = np.asarray(candidates, dtype=np.float64)
    if candidates.ndim != 2 or candidates.shape[1] != target.shape[1]:
        raise ValueError(f"candidates must be [M, {target.shape[1]}], got {candidates.shape}")
    everything = np.concatenate([target, candidates])
    everything = everything / np.linalg.norm(everything, axis=1, keepdims=True)
    distances = cosine_distances(everything)
    return fps_from_distances(distances[0, 1:], distances[1:, 1:])
