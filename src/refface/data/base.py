"""Pieces shared by the degradation models: the sample type, input checks and pixel operations.

The operations work on float64 RGB images in [0, 1] (HxWx3) and take every random draw from the
`numpy.random.Generator` they are given, so a sample depends only on its seed and never on
global random state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np

from refface.errors import RefFaceError

Params = dict[str, float | int | str]

RESIZE_MODES = {"area": cv2.INTER_AREA, "bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC}
# ITU-R 601 luma, the weights of OpenCV's and torchvision's RGB -> gray.
LUMA = np.array([0.299, 0.587, 0.114])


@dataclass(frozen=True)
class DegradedSample:
    """A degraded image (uint8 HxWx3 RGB, the input's shape) and the parameters that made it."""

    image: np.ndarray
    params: Params


class Degradation(Protocol):
    """Anything that turns an HQ image into a `DegradedSample`; training code accepts any of these."""

    @property
    def name(self) -> str: ...

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> DegradedSample: ...


def as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Check an HxWx3 RGB array; uint8 passes through, floats in [0, 1] are rounded to uint8."""
    if not isinstance(image, np.ndarray):
        raise RefFaceError(f"The image to degrade must be a numpy array, not {type(image).__name__}.")
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
        raise RefFaceError(f"The image to degrade must be an HxWx3 RGB array, not shape {image.shape}.")
    if image.dtype == np.uint8:
        return image
    if np.issubdtype(image.dtype, np.floating):
        if not np.isfinite(image).all() or image.min() < 0 or image.max() > 1:
            raise RefFaceError("The float image to degrade must hold finite values in [0, 1].")
        return to_uint8(image)
    raise RefFaceError(f"The image to degrade must be uint8 (or float in [0, 1]), not {image.dtype}.")


def to_float(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float64) / 255.0


def to_uint8(image: np.ndarray) -> np.ndarray:
    """[0, 1] floats -> uint8 by rounding (half to even, as OpenCV's saturate_cast does)."""
    return np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)


def quantise(image: np.ndarray) -> np.ndarray:
    """Snap to the 256 levels of an 8-bit image, keeping float."""
    return np.clip(np.round(image * 255.0), 0, 255) / 255.0


def blur(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Correlate with `kernel`, mirroring the border without repeating the edge pixel (reflect-101)."""
    return cv2.filter2D(image, -1, kernel, borderType=cv2.BORDER_REFLECT_101)


def resize(image: np.ndarray, width: int, height: int, mode: str) -> np.ndarray:
    """Resize to at least 1x1 pixels with OpenCV's `mode` interpolation (area, bilinear or bicubic)."""
    width, height = max(1, int(width)), max(1, int(height))
    if (height, width) == image.shape[:2]:
        return image
    resized = cv2.resize(image, (width, height), interpolation=RESIZE_MODES[mode])
    return resized.reshape(height, width, -1)


def add_gaussian_noise(image: np.ndarray, sigma: float, rng: np.random.Generator, gray: bool = False) -> np.ndarray:
    """Add N(0, sigma/255) noise (sigma in 0..255 units), per channel or shared by all channels; clip."""
    shape = image.shape[:2] + (1,) if gray else image.shape
    noise = rng.standard_normal(shape) * (sigma / 255.0)
    return np.clip(image + noise, 0.0, 1.0)


def add_poisson_noise(image: np.ndarray, scale: float, rng: np.random.Generator, gray: bool = False) -> np.ndarray:
    """Add shot noise as BasicSR does; clip.

    The image (or its luma for gray noise) is snapped to 8-bit levels q; with n distinct levels the
    photon count is vals = 2**ceil(log2 n), so noise = (Poisson(q * vals) / vals - q) * scale. Fewer
    distinct values mean fewer "photons" and stronger noise, like a dim, low-bit-depth sensor.
    """
    source = image @ LUMA if gray else image
    levels = quantise(source)
    vals = 2.0 ** np.ceil(np.log2(len(np.unique(levels))))
    noise = (rng.poisson(levels * vals) / vals - levels) * scale
    if gray:
        noise = noise[..., None]
    return np.clip(image + noise, 0.0, 1.0)


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    """JPEG round trip through OpenCV at `quality` (clipped to 0..100), returning [0, 1] floats.

    OpenCV's encoder assumes BGR order when it converts to YCbCr, so the RGB image is swapped to
    BGR for the trip and back afterwards; otherwise chroma subsampling would hit the wrong colours.
    """
    quality = int(np.clip(quality, 0, 100))
    bgr = cv2.cvtColor(to_uint8(np.clip(image, 0.0, 1.0)), cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("OpenCV failed to JPEG-encode an image.")
    decoded = cv2.imdecode(encoded, cv2.IMREAD_COLOR)
    return to_float(cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB))


def uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(bounds[0], bounds[1]))


def choose(rng: np.random.Generator, options: tuple[str, ...], probabilities: tuple[float, ...]) -> str:
    """One of `options` with the given (not necessarily normalised) probabilities."""
    cumulative = np.cumsum(probabilities, dtype=np.float64)
    index = int(np.searchsorted(cumulative / cumulative[-1], rng.random(), side="right"))
    return options[min(index, len(options) - 1)]


def check_range(bounds: tuple[float, float], what: str, low: float = 0.0) -> None:
    """A (min, max) pair with low <= min <= max, or one sentence saying which range is wrong."""
    if len(bounds) != 2 or not bounds[0] <= bounds[1] or bounds[0] < low:
        raise RefFaceError(f"The {what} range must be (min, max) with {low} <= min <= max, not {bounds}.")
