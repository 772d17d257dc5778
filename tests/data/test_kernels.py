"""Blur kernels: normalisation, symmetry, the covariance convention, limits and frequency response."""

from __future__ import annotations

import math

import numpy as np
import pytest

from refface.data.kernels import (
    covariance,
    gaussian_kernel,
    generalized_gaussian_kernel,
    kernel_from_params,
    plateau_kernel,
    pulse_kernel,
    sinc_kernel,
)


def _moments(kernel: np.ndarray) -> np.ndarray:
    """Measured covariance [[E x², E xy], [E xy, E y²]] with x along columns, y along rows."""
    axis = np.arange(kernel.shape[0]) - kernel.shape[0] // 2
    x, y = np.meshgrid(axis, axis)
    xy = np.sum(kernel * x * y)
    return np.array([[np.sum(kernel * x * x), xy], [xy, np.sum(kernel * y * y)]])


ALL_KERNELS = [
    gaussian_kernel(41, 3.0),
    gaussian_kernel(41, 4.0, 1.5, 0.7),
    generalized_gaussian_kernel(21, 2.0, 1.0, 1.2, beta=0.6),
    generalized_gaussian_kernel(21, 2.0, beta=3.0),
    plateau_kernel(21, 1.5, 2.5, -0.4, beta=1.5),
    sinc_kernel(13, math.pi / 4),
    pulse_kernel(7),
]


@pytest.mark.parametrize("kernel", ALL_KERNELS)
def test_kernels_are_normalised_odd_squares(kernel):
    assert kernel.dtype == np.float64 and kernel.shape[0] == kernel.shape[1] and kernel.shape[0] % 2 == 1
    assert np.isfinite(kernel).all()
    assert kernel.sum() == pytest.approx(1.0, abs=1e-12)
    # Every family is point-symmetric about the centre (rotation by 180 degrees).
    assert np.allclose(kernel, kernel[::-1, ::-1])


def test_grid_is_centred_and_isotropic_kernels_are_fully_symmetric():
    kernel = gaussian_kernel(41, 5.0)
    assert np.unravel_index(np.argmax(kernel), kernel.shape) == (20, 20)
    for other in (kernel.T, kernel[::-1], kernel[:, ::-1]):
        assert np.allclose(kernel, other)
    assert np.allclose(kernel, kernel_from_params("iso", 41, 5.0, 99.0, 1.0))  # iso ignores sigma_y / theta


def test_gaussian_variance_matches_sigma():
    for sigma in (1.0, 2.0, 4.0):
        assert np.allclose(_moments(gaussian_kernel(41, sigma)), np.diag([sigma**2, sigma**2]), rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("theta", [0.0, 0.5, math.pi / 4, -2.0])
def test_anisotropic_covariance_follows_rotation_convention(theta):
    measured = _moments(gaussian_kernel(41, 3.0, 1.2, theta))
    assert np.allclose(measured, covariance(3.0, 1.2, theta), atol=1e-3)


def test_anisotropic_axes_and_rotation():
    wide = gaussian_kernel(31, 4.0, 1.0, 0.0)
    assert np.allclose(wide, gaussian_kernel(31, 1.0, 4.0, 0.0).T)
    assert np.allclose(gaussian_kernel(31, 4.0, 1.0, math.pi / 2), wide.T)
    assert np.allclose(gaussian_kernel(31, 4.0, 1.0, math.pi), wide)
    assert _moments(wide)[0, 0] > 10 * _moments(wide)[1, 1]  # sigma_x spreads along columns
    diagonal = gaussian_kernel(31, 4.0, 1.0, math.pi / 4)
    assert np.trace(diagonal) > 3 * np.trace(diagonal[:, ::-1])  # theta = pi/4 lies along the main diagonal


@pytest.mark.parametrize("sigma", [0.0, 1e-6, 9e-4])
def test_zero_sigma_gives_pulse(sigma):
    for kernel in (
        gaussian_kernel(41, sigma),
        gaussian_kernel(41, sigma, sigma, 1.0),
        generalized_gaussian_kernel(21, sigma, beta=0.5),
        plateau_kernel(21, sigma, sigma, 0.3, beta=1.0),
    ):
        assert np.array_equal(kernel, pulse_kernel(kernel.shape[0]))


def test_one_zero_sigma_gives_a_line_not_nan():
    kernel = gaussian_kernel(21, 3.0, 0.0, 0.0)
    assert np.isfinite(kernel).all()
    assert np.allclose(kernel[10], gaussian_kernel(21, 3.0)[10] / gaussian_kernel(21, 3.0)[10].sum())
    assert kernel.sum() - kernel[10].sum() < 1e-12


def test_generalized_and_plateau_shapes():
    assert np.allclose(generalized_gaussian_kernel(21, 2.0, 3.0, 0.4, beta=1.0), gaussian_kernel(21, 2.0, 3.0, 0.4))
    axis = np.arange(21) - 10
    far = np.hypot(*np.meshgrid(axis, axis)) > 5
    heavy, light = generalized_gaussian_kernel(21, 2.0, beta=0.5), generalized_gaussian_kernel(21, 2.0, beta=4.0)
    assert heavy[far].sum() > 10 * light[far].sum()
    flat = plateau_kernel(21, 3.0, beta=2.0)
    assert flat[10, 11] / flat[10, 10] > gaussian_kernel(21, 3.0)[10, 11] / gaussian_kernel(21, 3.0)[10, 10]


@pytest.mark.parametrize(("size", "omega"), [(21, math.pi / 3), (21, math.pi / 2), (13, math.pi / 5)])
def test_sinc_is_a_circular_low_pass(size, omega):
    kernel = sinc_kernel(size, omega)
    assert np.allclose(kernel, kernel.T) and np.argmax(kernel) == kernel.size // 2
    assert kernel.min() < 0  # ringing lobes
    response = np.abs(np.fft.fft2(kernel, (256, 256)))
    frequency = np.fft.fftfreq(256) * 2 * np.pi
    radius = np.hypot(*np.meshgrid(frequency, frequency))
    assert response[radius < 0.5 * omega].min() > 0.8
    assert response[radius > 1.3 * omega].max() < 0.15


def test_sinc_centre_is_the_continuous_limit():
    kernel = sinc_kernel(21, 1.0)
    # Neighbours at r = 1 relate to the centre as J1(omega)/(2 pi) : omega/(4 pi) before normalising.
    from scipy.special import j1

    assert kernel[10, 11] / kernel[10, 10] == pytest.approx((j1(1.0) / (2 * math.pi)) / (1.0 / (4 * math.pi)))


def test_bad_arguments():
    with pytest.raises(ValueError):
        gaussian_kernel(20, 1.0)
    with pytest.raises(ValueError):
        gaussian_kernel(21, -1.0)
    with pytest.raises(ValueError):
        sinc_kernel(21, 0.0)
    with pytest.raises(ValueError):
        kernel_from_params("box", 21)
