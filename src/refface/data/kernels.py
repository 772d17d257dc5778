"""Blur kernels for synthesising low-quality faces (the BasicSR / Real-ESRGAN kernel families).

Every kernel is a float64 odd-sized square that sums to 1, so blurring never changes the mean
brightness. Coordinates are centred on the middle pixel (size 41 -> -20..20); x runs along columns
and y along rows, and the covariance is R(theta) diag(sigma_x², sigma_y²) R(theta)ᵀ as in the
official degradation code, so sampled parameters mean the same thing here as there.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import special

# Below this a Gaussian is narrower than a thousandth of a pixel: the exact limit is the identity.
MIN_SIGMA = 1e-3

GAUSSIAN_KINDS = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")


def _check_size(size: int) -> int:
    if int(size) != size or size < 1 or size % 2 == 0:
        raise ValueError(f"A blur kernel size must be a positive odd integer, not {size}.")
    return int(size)


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Centred (x, y) coordinates: x varies along columns, y along rows."""
    axis = np.arange(size, dtype=np.float64) - size // 2
    return np.meshgrid(axis, axis)


def _normalised(kernel: np.ndarray) -> np.ndarray:
    return kernel / np.sum(kernel)


def pulse_kernel(size: int) -> np.ndarray:
    """The identity kernel: 1 in the middle, so filtering with it leaves an image unchanged."""
    size = _check_size(size)
    kernel = np.zeros((size, size), dtype=np.float64)
    kernel[size // 2, size // 2] = 1.0
    return kernel


def covariance(sigma_x: float, sigma_y: float, theta: float) -> np.ndarray:
    """The 2x2 covariance of a Gaussian with axis spreads sigma_x, sigma_y rotated by theta radians."""
    cos, sin = np.cos(theta), np.sin(theta)
    rotation = np.array([[cos, -sin], [sin, cos]])
    return rotation @ np.diag([sigma_x**2, sigma_y**2]) @ rotation.T


def _mahalanobis(size: int, sigma_x: float, sigma_y: float, theta: float) -> np.ndarray:
    """Squared Mahalanobis distance of every kernel pixel from the centre."""
    x, y = _grid(size)
    inverse = np.linalg.inv(covariance(max(sigma_x, MIN_SIGMA), max(sigma_y, MIN_SIGMA), theta))
    return inverse[0, 0] * x * x + (inverse[0, 1] + inverse[1, 0]) * x * y + inverse[1, 1] * y * y


def _is_point(sigma_x: float, sigma_y: float) -> bool:
    if sigma_x < 0 or sigma_y < 0:
        raise ValueError(f"Blur sigmas must be non-negative, not ({sigma_x}, {sigma_y}).")
    return max(sigma_x, sigma_y) < MIN_SIGMA


def _profile_kernel(
    size: int, sigma_x: float, sigma_y: float | None, theta: float, profile: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
    """A kernel whose value is `profile(d²)` of the Mahalanobis distance d; sigma ~0 gives the pulse (not NaN)."""
    size = _check_size(size)
    sigma_y = sigma_x if sigma_y is None else sigma_y
    if _is_point(sigma_x, sigma_y):
        return pulse_kernel(size)
    return _normalised(profile(_mahalanobis(size, sigma_x, sigma_y, theta)))


def gaussian_kernel(size: int, sigma_x: float, sigma_y: float | None = None, theta: float = 0.0) -> np.ndarray:
    """Bivariate Gaussian; isotropic when sigma_y is None."""
    return _profile_kernel(size, sigma_x, sigma_y, theta, lambda d2: np.exp(-0.5 * d2))


def generalized_gaussian_kernel(
    size: int, sigma_x: float, sigma_y: float | None = None, theta: float = 0.0, beta: float = 1.0
) -> np.ndarray:
    """exp(-½ d²ᵝ): beta < 1 gives heavier tails, beta > 1 a flatter top (beta = 1 is Gaussian)."""
    return _profile_kernel(size, sigma_x, sigma_y, theta, lambda d2: np.exp(-0.5 * np.power(d2, beta)))


def plateau_kernel(
    size: int, sigma_x: float, sigma_y: float | None = None, theta: float = 0.0, beta: float = 1.0
) -> np.ndarray:
    """1 / (1 + d²ᵝ): a flat-topped kernel with polynomial tails, like out-of-focus blur."""
    return _profile_kernel(size, sigma_x, sigma_y, theta, lambda d2: 1.0 / (np.power(d2, beta) + 1.0))


def sinc_kernel(size: int, omega: float) -> np.ndarray:
    """Circular low-pass (2D "sinc", Airy) kernel with cutoff omega in radians/pixel (pi = no cut).

    It mimics ringing and overshoot from sharp resampling filters. The centre uses the r -> 0 limit
    omega² / (4 pi) of omega J1(omega r) / (2 pi r).
    """
    size = _check_size(size)
    if omega <= 0:
        raise ValueError(f"A sinc cutoff must be positive, not {omega}.")
    x, y = _grid(size)
    radius = np.hypot(x, y)
    safe = np.where(radius == 0, 1.0, radius)
    kernel = np.where(radius == 0, omega**2 / (4 * np.pi), omega * special.j1(omega * safe) / (2 * np.pi * safe))
    return _normalised(kernel)


def kernel_from_params(
    kind: str,
    size: int,
    sigma_x: float = 0.0,
    sigma_y: float = 0.0,
    theta: float = 0.0,
    beta: float = 1.0,
    omega: float = np.pi,
) -> np.ndarray:
    """Build a kernel from recorded parameters, so a params row alone reproduces the blur."""
    if kind in ("iso", "generalized_iso", "plateau_iso"):
        sigma_y, theta = sigma_x, 0.0
    if kind in ("iso", "aniso"):
        return gaussian_kernel(size, sigma_x, sigma_y, theta)
    if kind in ("generalized_iso", "generalized_aniso"):
        return generalized_gaussian_kernel(size, sigma_x, sigma_y, theta, beta)
    if kind in ("plateau_iso", "plateau_aniso"):
        return plateau_kernel(size, sigma_x, sigma_y, theta, beta)
    if kind == "sinc":
        return sinc_kernel(size, omega)
    if kind == "pulse":
        return pulse_kernel(size)
    raise ValueError(f"Unknown blur kernel kind {kind!r}; expected one of {', '.join(GAUSSIAN_KINDS)}, sinc, pulse.")
