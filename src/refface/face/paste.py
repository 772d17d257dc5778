"""Putting a restored crop back into the photo: inverse warp, a soft mask, and the photo's tone at the mask's edge.

Only pixels under the mask change; everything else is copied bit for bit, and the work is done in the crop's
bounding box so huge photos cost no more than small ones. The photo may be larger than the one the face was
found in (an enlarged output): the crop is then warped straight to the output scale, never through the original
size. 8-bit and 16-bit photos are blended in floating point and rounded once.

The mask is the face's own outline (the jaw line from its 68 landmarks and a forehead extrapolated from the
brows) or the whole aligned square, feathered either way. Before it is pasted, the crop's low frequencies are
brought to the photo's in a band at the mask's edge, so a restored face that came out brighter or in another
colour cast meets the photo without a seam.
"""

from __future__ import annotations

import cv2
import numpy as np

from refface.face.alignment import AlignedFace, invert_matrix, scale_matrix, transform_points

FEATHER = 0.06  # the mask rises from 0 to 1 over this fraction of the crop side
TONE_BAND = 0.08  # beyond the feather, the crop's tone fades back to its own over this fraction of the side
TONE_SIGMA = 0.04  # the low frequencies matched to the photo: a Gaussian of this fraction of the side
FOREHEAD = 0.8  # the forehead's top lies this many eye-to-mouth distances above the brows


def _smoothstep(values: np.ndarray) -> np.ndarray:
    values = np.clip(values, 0.0, 1.0)
    return values * values * (3.0 - 2.0 * values)


def feather_mask(size: int, margin: float = 0.02, feather: float = FEATHER) -> np.ndarray:
    """float32 [size, size] mask: 0 within `margin` of the crop edge, rising smoothly over `feather` (fractions)."""
    coords = np.arange(size, dtype=np.float32) + 0.5
    to_edge = np.minimum(coords, size - coords)  # pixels from the crop edge
    margin_px = max(margin * size, 1.0)  # the outermost pixel is always 0: no hard seam at small sizes
    ramp = _smoothstep((to_edge - margin_px) / max(feather * size, 1.0))
    return np.minimum(ramp[:, None], ramp[None, :])


def face_outline(landmarks: np.ndarray) -> np.ndarray:
    """The face's outline (a convex polygon, float [K, 2]) from 68 landmarks: the jaw line, and a forehead above
    the brows as far again as about the eyes are above the mouth."""
    landmarks = np.asarray(landmarks, dtype=np.float64)
    eyes = landmarks[36:48].mean(axis=0)
    mouth = landmarks[48:68].mean(axis=0)
    up = eyes - mouth
    forehead = landmarks[17:27] + up * FOREHEAD
    points = np.concatenate([landmarks[0:17], forehead, landmarks[17:27]])
    return cv2.convexHull(points.astype(np.float32)).reshape(-1, 2)


def _inside_distance(size: int, outline: np.ndarray | None, margin: float = 0.02) -> np.ndarray:
    """float32 [size, size]: each pixel's distance (pixels) inside the mask's region, 0 outside it."""
    if outline is None:
        coords = np.arange(size, dtype=np.float32) + 0.5
        to_edge = np.minimum(coords, size - coords) - max(margin * size, 1.0)
        return np.maximum(np.minimum(to_edge[:, None], to_edge[None, :]), 0.0)
    region = np.zeros((size, size), np.uint8)
    cv2.fillConvexPoly(region, np.rint(outline * 16).astype(np.int32), 1, lineType=cv2.LINE_AA, shift=4)
    return cv2.distanceTransform(region, cv2.DIST_L2, 5)


class PasteMask:
    """A face's mask and tone band in crop space (`size` pixels), from its landmarks (None: the square)."""

    def __init__(self, size: int, landmarks: np.ndarray | None = None, feather: float = FEATHER) -> None:
        self.size = size
        outline = face_outline(landmarks) if landmarks is not None else None
        depth = _inside_distance(size, outline)
        feather_px = max(feather * size, 1.0)
        self.alpha = _smoothstep(depth / feather_px).astype(np.float32)
        if outline is not None:  # a face larger than its crop still fades out at the crop's edge
            self.alpha *= feather_mask(size, feather=feather)
        band = max(TONE_BAND * size, 1.0)
        self.band = (1.0 - _smoothstep((depth - feather_px) / band)).astype(np.float32)


def crop_landmarks(aligned: AlignedFace, crop_size: int) -> np.ndarray | None:
    """The face's 68 landmarks in a `crop_size` crop of it (None when it has none, as for a crop input)."""
    if aligned.face is None:
        return None
    return transform_points(scale_matrix(aligned.matrix, crop_size / aligned.size), aligned.face.landmarks)


def paste_mask(aligned: AlignedFace, crop_size: int, shape: str = "face", feather: float = FEATHER) -> PasteMask:
    """The mask a `crop_size` restored crop of `aligned` is pasted with: the face's outline ("face", where the
    landmarks are known) or the feathered square ("square")."""
    landmarks = crop_landmarks(aligned, crop_size) if shape == "face" else None
    return PasteMask(crop_size, landmarks, feather)


def match_edge_tone(restored: np.ndarray, photo_crop: np.ndarray, mask: PasteMask) -> np.ndarray:
    """The restored crop (float, 0..255) with its low frequencies replaced by the photo's in the mask's edge band,
    fading back to its own inside: brightness and colour meet the photo where the two are blended."""
    size = mask.size
    if photo_crop.shape[:2] != (size, size):
        photo_crop = cv2.resize(photo_crop, (size, size), interpolation=cv2.INTER_CUBIC)
    difference = photo_crop.astype(np.float32) - restored
    sigma = max(TONE_SIGMA * size, 0.5)
    low = cv2.GaussianBlur(difference, (0, 0), sigmaX=sigma, borderType=cv2.BORDER_REFLECT_101)
    return restored + low * mask.band[..., None]


def output_matrix(matrix: np.ndarray, photo_shape: tuple[int, int], output_shape: tuple[int, int]) -> np.ndarray:
    """The photo->crop matrix for an output of `output_shape` made from a photo of `photo_shape` (same content,
    scaled; pixel centres consistent as in cv2.resize)."""
    sy, sx = output_shape[0] / photo_shape[0], output_shape[1] / photo_shape[1]
    to_photo = np.array([[1 / sx, 0, 0.5 / sx - 0.5], [0, 1 / sy, 0.5 / sy - 0.5], [0, 0, 1]])
    return (np.vstack([matrix, [0, 0, 1]]) @ to_photo)[:2]


def _footprint(matrix: np.ndarray, size: int, shape: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """Bounding box (x0, y0, x1, y1) of a size x size crop square in an image of `shape`, clipped; None outside."""
    corners = np.array([[-0.5, -0.5], [size - 0.5, -0.5], [-0.5, size - 0.5], [size - 0.5, size - 0.5]])
    points = transform_points(invert_matrix(matrix), corners)
    height, width = shape
    x0, y0 = np.floor(points.min(axis=0)).astype(int) - 1
    x1, y1 = np.ceil(points.max(axis=0)).astype(int) + 2
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    if x0 >= x1 or y0 >= y1:
        return None
    return int(x0), int(y0), int(x1), int(y1)


def _placement(aligned: AlignedFace, crop_size: int, shape: tuple[int, int]):
    """(box, crop->box matrix for WARP_INVERSE_MAP, box size) of a `crop_size` crop of `aligned` in an image of
    `shape` (the photo, or an enlarged output of it); None when it lies outside."""
    matrix = output_matrix(aligned.matrix, aligned.photo_shape, shape)
    box = _footprint(matrix, aligned.size, shape)
    if box is None:
        return None
    x0, y0, x1, y1 = box
    matrix = scale_matrix(matrix, crop_size / aligned.size)
    # Image pixel (x, y) of the box = box pixel (x - x0, y - y0): shift the image->crop matrix accordingly.
    shifted = matrix.copy()
    shifted[:, 2] += matrix[:, :2] @ np.array([x0, y0], dtype=np.float64)
    return box, shifted, (x1 - x0, y1 - y0)


def _warp(image: np.ndarray, shifted: np.ndarray, region: tuple[int, int], flags: int, border: int) -> np.ndarray:
    return cv2.warpAffine(image, shifted, region, flags=flags | cv2.WARP_INVERSE_MAP, borderMode=border)


def _landing_size(shifted: np.ndarray, size: int) -> int:
    """The side a `size` crop is resampled to before it is warped: at most twice the size it lands at, so a crop
    pasted much smaller than it is gets area-averaged first and its detail does not alias."""
    shrink = float(np.sqrt(abs(np.linalg.det(shifted[:, :2]))))  # crop pixels per image pixel
    return min(size, int(np.ceil(2.0 * size / shrink))) if shrink > 2.0 else size


def _area_resized(image: np.ndarray, side: int) -> np.ndarray:
    return image if image.shape[0] == side else cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA)


def paste_face(
    photo: np.ndarray,
    restored: np.ndarray,
    aligned: AlignedFace,
    *,
    mask: str = "face",
    match_tone: bool = True,
    feather: float = FEATHER,
) -> np.ndarray:
    """A copy of `photo` (uint8 or uint16 RGB; the photo `aligned` was found in, or an enlarged output of it) with
    `restored` (a square RGB crop of any size: uint8, or float in 0..255) blended into the face.

    `mask`: "face" (the face's outline, where its landmarks are known) or "square". `match_tone`: bring the crop's
    low frequencies to the photo's in the band at the mask's edge (from the aligned input crop).
    """
    result = photo.copy()
    crop_size = restored.shape[0]
    placed = _placement(aligned, crop_size, photo.shape[:2])
    if placed is None:
        return result
    (x0, y0, x1, y1), shifted, region = placed
    shape = paste_mask(aligned, crop_size, mask, feather)
    crop = restored.astype(np.float32)
    if match_tone:
        crop = match_edge_tone(crop, aligned.image, shape)
    top = 65535.0 if photo.dtype == np.uint16 else 255.0
    side = _landing_size(shifted, crop_size)
    crop = _area_resized(crop * np.float32(top / 255.0), side)
    alpha = _area_resized(shape.alpha, side)
    shifted = scale_matrix(shifted, side / crop_size)
    face = _warp(crop, shifted, region, cv2.INTER_CUBIC, cv2.BORDER_REPLICATE)
    weight = _warp(alpha, shifted, region, cv2.INTER_LINEAR, cv2.BORDER_CONSTANT)[..., None]
    original = result[y0:y1, x0:x1].astype(np.float32)
    blended = np.clip(np.rint(original + (face - original) * weight), 0, top)
    result[y0:y1, x0:x1] = np.where(weight > 0, blended, original).astype(photo.dtype)
    return result


def face_mask(
    aligned: AlignedFace,
    photo_shape: tuple[int, int],
    crop_size: int | None = None,
    *,
    mask: str = "face",
    feather: float = FEATHER,
) -> np.ndarray:
    """float32 [height, width]: how much of each pixel of an image of `photo_shape` (the photo, or an enlarged
    output of it) `paste_face` takes from a restored crop of `crop_size` pixels (default the aligned crop's)."""
    crop_size = crop_size or aligned.size
    weights = np.zeros(photo_shape, np.float32)
    placed = _placement(aligned, crop_size, photo_shape)
    if placed is not None:
        (x0, y0, x1, y1), shifted, region = placed
        side = _landing_size(shifted, crop_size)
        alpha = _area_resized(paste_mask(aligned, crop_size, mask, feather).alpha, side)
        shifted = scale_matrix(shifted, side / crop_size)
        weights[y0:y1, x0:x1] = _warp(alpha, shifted, region, cv2.INTER_LINEAR, cv2.BORDER_CONSTANT)
    return weights
