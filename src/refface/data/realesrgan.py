"""The second-order Real-ESRGAN degradation (x4plus defaults), used to train Composite-Context models.

Two rounds of blur -> resize -> noise -> JPEG, then a final 1/scale_factor resize with a sinc
filter and JPEG in random order. Real-ESRGAN feeds that small image to an x4 network; refface's
models take LQ at the GT size, so the result is resized back up (bilinear) to the input size.
Every draw comes from the given rng and every drawn value is recorded in a flat params dict.
Differences from the GPU original: OpenCV resizing (INTER_AREA/LINEAR/CUBIC for torch's
area/bilinear/bicubic) and OpenCV JPEG at an integer quality instead of DiffJPEG.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from refface.data.base import (
    DegradedSample,
    Params,
    add_gaussian_noise,
    add_poisson_noise,
    as_rgb_uint8,
    blur,
    check_range,
    choose,
    jpeg,
    quantise,
    resize,
    to_float,
    to_uint8,
    uniform,
)
from refface.data.kernels import GAUSSIAN_KINDS, kernel_from_params
from refface.errors import RefFaceError

RESIZE_DIRECTIONS = ("up", "down", "keep")
RESIZE_MODE_NAMES = ("area", "bilinear", "bicubic")
KERNEL_SIZES = tuple(range(7, 22, 2))


@dataclass(frozen=True)
class StageSettings:
    """One blur -> resize -> noise -> JPEG round of the Real-ESRGAN model (defaults: first round)."""

    blur_probability: float = 1.0
    kernel_sizes: tuple[int, ...] = KERNEL_SIZES
    kernel_kinds: tuple[str, ...] = GAUSSIAN_KINDS
    kernel_probabilities: tuple[float, ...] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    sinc_probability: float = 0.1
    sigma: tuple[float, float] = (0.2, 3.0)
    generalized_beta: tuple[float, float] = (0.5, 4.0)
    plateau_beta: tuple[float, float] = (1.0, 2.0)
    resize_probabilities: tuple[float, float, float] = (0.2, 0.7, 0.1)
    resize_range: tuple[float, float] = (0.15, 1.5)
    gaussian_noise_probability: float = 0.5
    noise_sigma: tuple[float, float] = (1.0, 30.0)
    poisson_scale: tuple[float, float] = (0.05, 3.0)
    gray_noise_probability: float = 0.4
    jpeg: tuple[float, float] = (30.0, 95.0)

    def __post_init__(self) -> None:
        known = set(self.kernel_kinds) <= set(GAUSSIAN_KINDS)
        if len(self.kernel_kinds) != len(self.kernel_probabilities) or not known:
            raise RefFaceError(f"The kernel kinds must be among {', '.join(GAUSSIAN_KINDS)}, one probability each.")
        if not self.kernel_sizes or any(size < 1 or size % 2 == 0 for size in self.kernel_sizes):
            raise RefFaceError(f"The blur kernel sizes must be positive odd numbers, not {self.kernel_sizes}.")
        for bounds, what in ((self.sigma, "blur sigma"), (self.noise_sigma, "noise sigma"), (self.jpeg, "JPEG")):
            check_range(bounds, what)
        check_range(self.poisson_scale, "Poisson scale")
        check_range(self.resize_range, "resize scale", low=1e-3)
        if not self.resize_range[0] <= 1.0 <= self.resize_range[1]:
            raise RefFaceError(f"The resize scale range must contain 1, not {self.resize_range}.")


def _second_stage() -> StageSettings:
    return StageSettings(
        blur_probability=0.8,
        sigma=(0.2, 1.5),
        resize_probabilities=(0.3, 0.4, 0.3),
        resize_range=(0.3, 1.2),
        noise_sigma=(1.0, 25.0),
        poisson_scale=(0.05, 2.5),
    )


def _sample_beta(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    """BasicSR's shape draw: half the time below 1, half above (a range starting at 1 gives 1)."""
    if rng.random() < 0.5:
        return uniform(rng, (bounds[0], 1.0))
    return uniform(rng, (1.0, bounds[1]))


def _sample_blur(rng: np.random.Generator, stage: StageSettings, prefix: str) -> Params:
    """Kernel family, size and shape for one blur, as Real-ESRGAN's dataset draws them."""
    size = stage.kernel_sizes[int(rng.integers(len(stage.kernel_sizes)))]
    if rng.random() < stage.sinc_probability:
        omega = uniform(rng, (math.pi / 3 if size < 13 else math.pi / 5, math.pi))
        return {f"{prefix}_kernel": "sinc", f"{prefix}_size": size, f"{prefix}_omega": omega}
    kind = choose(rng, stage.kernel_kinds, stage.kernel_probabilities)
    sigma_x = uniform(rng, stage.sigma)
    if kind.endswith("iso") and not kind.endswith("aniso"):
        sigma_y, theta = sigma_x, 0.0
    else:
        sigma_y, theta = uniform(rng, stage.sigma), uniform(rng, (-math.pi, math.pi))
    params: Params = {
        f"{prefix}_kernel": kind,
        f"{prefix}_size": size,
        f"{prefix}_sigma_x": sigma_x,
        f"{prefix}_sigma_y": sigma_y,
        f"{prefix}_theta": theta,
    }
    if kind.startswith("generalized"):
        params[f"{prefix}_beta"] = _sample_beta(rng, stage.generalized_beta)
    elif kind.startswith("plateau"):
        params[f"{prefix}_beta"] = _sample_beta(rng, stage.plateau_beta)
    return params


def _sample_resize(rng: np.random.Generator, stage: StageSettings, prefix: str) -> Params:
    direction = choose(rng, RESIZE_DIRECTIONS, stage.resize_probabilities)
    if direction == "up":
        scale = uniform(rng, (1.0, stage.resize_range[1]))
    elif direction == "down":
        scale = uniform(rng, (stage.resize_range[0], 1.0))
    else:
        scale = 1.0
    mode = RESIZE_MODE_NAMES[int(rng.integers(len(RESIZE_MODE_NAMES)))]
    return {f"{prefix}_direction": direction, f"{prefix}_scale": scale, f"{prefix}_mode": mode}


def _sample_noise(rng: np.random.Generator, stage: StageSettings, prefix: str) -> Params:
    if rng.random() < stage.gaussian_noise_probability:
        params: Params = {f"{prefix}_kind": "gaussian", f"{prefix}_sigma": uniform(rng, stage.noise_sigma)}
    else:
        params = {f"{prefix}_kind": "poisson", f"{prefix}_scale": uniform(rng, stage.poisson_scale)}
    params[f"{prefix}_gray"] = int(rng.random() < stage.gray_noise_probability)
    return params


def _get(params: Params, key: str) -> float | int | str:
    if key not in params:
        raise RefFaceError(f"The degradation parameters lack {key!r}; they were not made by this model.")
    return params[key]


def _blur(pixels: np.ndarray, params: Params, prefix: str) -> np.ndarray:
    kind = str(_get(params, f"{prefix}_kernel"))
    if kind in ("none", "pulse"):
        return pixels
    kernel = kernel_from_params(
        kind,
        int(_get(params, f"{prefix}_size")),
        sigma_x=float(params.get(f"{prefix}_sigma_x", 0.0)),
        sigma_y=float(params.get(f"{prefix}_sigma_y", 0.0)),
        theta=float(params.get(f"{prefix}_theta", 0.0)),
        beta=float(params.get(f"{prefix}_beta", 1.0)),
        omega=float(params.get(f"{prefix}_omega", math.pi)),
    )
    return blur(pixels, kernel)


def _noise(pixels: np.ndarray, params: Params, prefix: str, rng: np.random.Generator) -> np.ndarray:
    gray = bool(int(_get(params, f"{prefix}_gray")))
    if _get(params, f"{prefix}_kind") == "gaussian":
        return add_gaussian_noise(pixels, float(_get(params, f"{prefix}_sigma")), rng, gray)
    return add_poisson_noise(pixels, float(_get(params, f"{prefix}_scale")), rng, gray)


@dataclass(frozen=True)
class SecondOrderDegradation:
    """Real-ESRGAN's second-order model; `scale_factor` is the overall SR factor (x4plus: 4).

    Params keys: blur1_* / blur2_* (kernel kind or "sinc"/"none", size, sigma_x, sigma_y, theta,
    beta, omega as relevant), resize1_* / resize2_* (direction, scale, mode), noise1_* / noise2_*
    (kind, sigma or scale, gray), jpeg1_quality, final_order, final_mode, final_kernel ("sinc" or
    "pulse"), final_size, final_omega, jpeg2_quality. Keys that do not apply are left out.
    """

    first: StageSettings = field(default_factory=StageSettings)
    second: StageSettings = field(default_factory=_second_stage)
    final_sinc_probability: float = 0.8
    final_sizes: tuple[int, ...] = KERNEL_SIZES
    resize_then_jpeg_probability: float = 0.5
    jpeg: tuple[float, float] = (30.0, 95.0)
    scale_factor: float = 4
    name: str = "realesrgan"

    def __post_init__(self) -> None:
        if self.scale_factor <= 0:
            raise RefFaceError(f"The Real-ESRGAN scale factor must be positive, not {self.scale_factor}.")
        check_range(self.jpeg, "final JPEG quality")

    def sample(self, rng: np.random.Generator) -> Params:
        """Draw every kernel, resize, noise, JPEG and ordering choice of one sample."""
        params: Params = {}
        params.update(_sample_blur(rng, self.first, "blur1"))
        params.update(_sample_resize(rng, self.first, "resize1"))
        params.update(_sample_noise(rng, self.first, "noise1"))
        params["jpeg1_quality"] = int(uniform(rng, self.first.jpeg))
        if rng.random() < self.second.blur_probability:
            params.update(_sample_blur(rng, self.second, "blur2"))
        else:
            params["blur2_kernel"] = "none"
        params.update(_sample_resize(rng, self.second, "resize2"))
        params.update(_sample_noise(rng, self.second, "noise2"))
        params["final_order"] = "resize_first" if rng.random() < self.resize_then_jpeg_probability else "jpeg_first"
        params["final_mode"] = RESIZE_MODE_NAMES[int(rng.integers(len(RESIZE_MODE_NAMES)))]
        if rng.random() < self.final_sinc_probability:
            size = self.final_sizes[int(rng.integers(len(self.final_sizes)))]
            omega = uniform(rng, (math.pi / 3, math.pi))
            params.update({"final_kernel": "sinc", "final_size": size, "final_omega": omega})
        else:
            params["final_kernel"] = "pulse"
        params["jpeg2_quality"] = int(uniform(rng, self.jpeg))
        return params

    def apply(self, image: np.ndarray, params: Params, rng: np.random.Generator) -> np.ndarray:
        """Degrade a uint8 HxWx3 RGB image (or floats in [0, 1]); noise pixels come from `rng`."""
        pixels = to_float(as_rgb_uint8(image))
        height, width = pixels.shape[:2]
        pixels = _blur(pixels, params, "blur1")
        scale = float(_get(params, "resize1_scale"))
        pixels = resize(pixels, int(width * scale), int(height * scale), str(_get(params, "resize1_mode")))
        pixels = _noise(pixels, params, "noise1", rng)
        pixels = jpeg(pixels, int(_get(params, "jpeg1_quality")))

        pixels = _blur(pixels, params, "blur2")
        scale = float(_get(params, "resize2_scale"))
        size = (int(width / self.scale_factor * scale), int(height / self.scale_factor * scale))
        pixels = resize(pixels, *size, str(_get(params, "resize2_mode")))
        pixels = _noise(pixels, params, "noise2", rng)

        small = (int(width // self.scale_factor), int(height // self.scale_factor))
        mode = str(_get(params, "final_mode"))
        if _get(params, "final_order") == "resize_first":
            pixels = jpeg(_blur(resize(pixels, *small, mode), params, "final"), int(_get(params, "jpeg2_quality")))
        else:
            pixels = _blur(resize(jpeg(pixels, int(_get(params, "jpeg2_quality"))), *small, mode), params, "final")
        pixels = resize(quantise(pixels), width, height, "bilinear")
        return to_uint8(pixels)

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> DegradedSample:
        params = self.sample(rng)
        return DegradedSample(self.apply(image, params, rng), params)
