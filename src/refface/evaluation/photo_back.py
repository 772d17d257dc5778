"""How much of a restoration reaches the photo given back, and whether its paste shows: the measures of
`benchmarks/bench_photo_back.py` and of the tests that hold the paste to them."""

from __future__ import annotations

import cv2
import numpy as np

from refface.face.alignment import AlignedFace, scale_matrix
from refface.face.paste import output_matrix, paste_mask


def reextracted(photo: np.ndarray, aligned: AlignedFace, crop_size: int) -> np.ndarray:
    """The face's aligned crop (`crop_size` pixels) taken again from a finished photo, at whatever scale the photo
    was given back (float32, the photo's value range)."""
    matrix = output_matrix(aligned.matrix, aligned.photo_shape, photo.shape[:2])
    matrix = scale_matrix(matrix, crop_size / aligned.size)
    return cv2.warpAffine(photo.astype(np.float32), matrix, (crop_size, crop_size), flags=cv2.INTER_CUBIC,
                          borderMode=cv2.BORDER_REFLECT_101)  # fmt: skip


def kept_psnr(photo: np.ndarray, restored: np.ndarray, aligned: AlignedFace, peak: float = 255.0) -> float:
    """PSNR (dB) of the restored crop against the same region of the finished photo, inside the face where the
    paste takes the crop whole."""
    size = restored.shape[0]
    inside = paste_mask(aligned, size, "face" if aligned.face is not None else "square").alpha > 0.999
    error = (reextracted(photo, aligned, size) - restored.astype(np.float32))[inside]
    mse = float(np.mean(error * error))
    return float("inf") if mse == 0 else 10.0 * np.log10(peak * peak / mse)


SEAM_SIGMA = 2.0  # pixels: a seam is a step in brightness or colour; finer texture is not what shows as one


def _across(image: np.ndarray, normal: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """|gradient . normal| of each colour channel (summed), at the seam's scale."""
    smooth = cv2.GaussianBlur(image.astype(np.float32), (0, 0), SEAM_SIGMA)
    total = np.zeros(image.shape[:2], np.float32)
    for channel in range(smooth.shape[2]):
        dx = cv2.Sobel(smooth[..., channel], cv2.CV_32F, 1, 0, ksize=3)
        dy = cv2.Sobel(smooth[..., channel], cv2.CV_32F, 0, 1, ksize=3)
        total += np.abs(dx * normal[0] + dy * normal[1])
    return total


def seam_figures(before: np.ndarray, after: np.ndarray, weights: np.ndarray) -> tuple[float, float]:
    """How much a paste's edge shows, in the band where it blends (0 < weight < 1), from the gradient across the
    mask's edge (along the mask's own gradient, colour channels summed, at the scale of a seam):

    - the seam figure: the gradient the paste added there (of the finished photo minus the input), relative to
      the input's own gradient in the band; 0 where the edge adds nothing;
    - the gradient ratio: the finished photo's gradient there relative to the input's; about 1 where nothing
      new shows (texture the restoration added raises both figures a little).
    """
    band = (weights > 0.02) & (weights < 0.98)
    wx = cv2.Sobel(weights, cv2.CV_32F, 1, 0, ksize=3)
    wy = cv2.Sobel(weights, cv2.CV_32F, 0, 1, ksize=3)
    length = np.maximum(np.hypot(wx, wy), 1e-12)
    normal = (wx / length, wy / length)
    own = max(float(_across(before, normal)[band].mean()), 1e-6)
    added = _across(after.astype(np.float32) - before.astype(np.float32), normal)[band].mean()
    return float(added / own), float(_across(after, normal)[band].mean() / own)


def seam_figure(before: np.ndarray, after: np.ndarray, weights: np.ndarray) -> float:
    """The seam figure of `seam_figures`: the gradient a paste added across its edge, relative to the photo's."""
    return seam_figures(before, after, weights)[0]
