"""Putting a restored crop back into the photo: inverse warp plus a feathered mask.

Only pixels under the (feathered) face square change; everything else is copied bit for bit, and
the work is done in the square's bounding box so huge photos cost no more than small ones.
"""

from __future__ import annotations

import cv2
import numpy as np

from refface.face.alignment import AlignedFace, invert_matrix, scale_matrix, transform_points


def feather_mask(size: int, margin: float = 0.02, feather: float = 0.06) -> np.ndarray:
    """float32 [size, size] mask: 0 within `margin` of the crop edge, rising smoothly over `feather` (fractions)."""
    coords = np.arange(size, dtype=np.float32) + 0.5
    to_edge = np.minimum(coords, size - coords)  # pixels from the crop edge
    margin_px = max(margin * size, 1.0)  # the outermost pixel is always 0: no hard seam at small sizes
    ramp = np.clip((to_edge - margin_px) / max(feather * size, 1.0), 0.0, 1.0)
    ramp = ramp * ramp * (3.0 - 2.0 * ramp)  # smoothstep: no visible seam at either end
    return np.minimum(ramp[:, None], ramp[None, :])


def _footprint(aligned: AlignedFace, photo_shape: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """Bounding box (x0, y0, x1, y1) of the crop square in the photo, clipped; None when it lies outside."""
    size = aligned.size
    corners = np.array([[-0.5, -0.5], [size - 0.5, -0.5], [-0.5, size - 0.5], [size - 0.5, size - 0.5]])
    points = transform_points(invert_matrix(aligned.matrix), corners)
    height, width = photo_shape
    x0, y0 = np.floor(points.min(axis=0)).astype(int) - 1
    x1, y1 = np.ceil(points.max(axis=0)).astype(int) + 2
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    if x0 >= x1 or y0 >= y1:
        return None
    return int(x0), int(y0), int(x1), int(y1)


def _placement(aligned: AlignedFace, crop_size: int, photo_shape: tuple[int, int]):
    """(box, crop->box matrix for WARP_INVERSE_MAP, box size) of a `crop_size` crop of `aligned`; None outside."""
    box = _footprint(aligned, photo_shape)
    if box is None:
        return None
    x0, y0, x1, y1 = box
    matrix = scale_matrix(aligned.matrix, crop_size / aligned.size)
    # Photo pixel (x, y) of the box = box pixel (x - x0, y - y0): shift the photo->crop matrix accordingly.
    shifted = matrix.copy()
    shifted[:, 2] += matrix[:, :2] @ np.array([x0, y0], dtype=np.float64)
    return box, shifted, (x1 - x0, y1 - y0)


def _warped_mask(crop_size: int, shifted: np.ndarray, region: tuple[int, int], feather: float) -> np.ndarray:
    return cv2.warpAffine(
        feather_mask(crop_size, feather=feather),
        shifted,
        region,
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0.0,
    )


def paste_face(photo: np.ndarray, restored: np.ndarray, aligned: AlignedFace, feather: float = 0.06) -> np.ndarray:
    """A copy of `photo` (uint8 RGB) with `restored` (uint8 RGB crop, any square size) warped into the face square."""
    result = photo.copy()
    crop_size = restored.shape[0]
    placed = _placement(aligned, crop_size, photo.shape[:2])
    if placed is None:
        return result
    (x0, y0, x1, y1), shifted, region = placed
    flags = cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP
    face = cv2.warpAffine(restored, shifted, region, flags=flags, borderMode=cv2.BORDER_REPLICATE)
    mask = _warped_mask(crop_size, shifted, region, feather)[..., None]
    original = result[y0:y1, x0:x1].astype(np.float32)
    blended = original + (face.astype(np.float32) - original) * mask
    result[y0:y1, x0:x1] = np.where(mask > 0, np.clip(np.rint(blended), 0, 255), original).astype(np.uint8)
    return result


def face_mask(
    aligned: AlignedFace, photo_shape: tuple[int, int], crop_size: int | None = None, feather: float = 0.06
) -> np.ndarray:
    """float32 [height, width]: how much of each photo pixel `paste_face` takes from a restored crop of
    `crop_size` pixels (default the aligned crop's), from 0 to 1."""
    crop_size = crop_size or aligned.size
    mask = np.zeros(photo_shape, np.float32)
    placed = _placement(aligned, crop_size, photo_shape)
    if placed is not None:
        (x0, y0, x1, y1), shifted, region = placed
        mask[y0:y1, x0:x1] = _warped_mask(crop_size, shifted, region, feather)
    return mask
