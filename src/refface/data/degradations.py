"""The ReF-LDM degradation model and the named presets, reproducible from (seed, image index).

y = upsample_back(JPEG_q(down_r(x * k_sigma) + n_delta)), following the official ReF-LDM data code
(`sample_degraded_image`): a 41x41 isotropic or anisotropic Gaussian blur (50/50), bilinear
downsampling by r to floor(w / r) x floor(h / r), Gaussian noise of std delta/255 per channel,
JPEG at quality int(q) through OpenCV, and bilinear upsampling back to the input size.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from types import MappingProxyType

import numpy as np
import torch

from refface.data.base import (
    Degradation,
    DegradedSample,
    Params,
    add_gaussian_noise,
    as_rgb_uint8,
    blur,
    check_range,
    jpeg,
    resize,
    to_float,
    to_uint8,
    uniform,
)
from refface.data.kernels import gaussian_kernel
from refface.data.preset_names import PRESET_NAMES
from refface.data.realesrgan import SecondOrderDegradation
from refface.errors import RefFaceError

__all__ = [
    "PRESETS",
    "Degradation",
    "DegradedSample",
    "PaperDegradation",
    "SecondOrderDegradation",
    "degradation_by_name",
    "degradation_with_ranges",
    "degrade",
    "degrade_tensor",
    "sample_rng",
]


def _param(params: Params, key: str) -> float | int | str:
    if key not in params:
        raise RefFaceError(f"The degradation parameters lack {key!r}; they were not made by this model.")
    return params[key]


@dataclass(frozen=True)
class PaperDegradation:
    """Ranges of the ReF-LDM model: blur sigma, downscale r, noise delta (0..255 units), JPEG quality q.

    `sample` draws one set of parameters; `apply` uses them and draws only the noise pixels from
    the rng it is given, so (params, rng state) fully determine the output.
    """

    sigma: tuple[float, float]
    scale: tuple[float, float]
    noise: tuple[float, float]
    jpeg: tuple[float, float]
    kernel_size: int = 41
    aniso_probability: float = 0.5
    name: str = "custom"

    def __post_init__(self) -> None:
        check_range(self.sigma, "blur sigma")
        check_range(self.scale, "downscale factor", low=1e-3)
        check_range(self.noise, "noise level")
        check_range(self.jpeg, "JPEG quality")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise RefFaceError(f"The blur kernel size must be a positive odd number, not {self.kernel_size}.")
        if not 0.0 <= self.aniso_probability <= 1.0:
            raise RefFaceError(f"The anisotropic-blur probability must be in [0, 1], not {self.aniso_probability}.")

    def sample(self, rng: np.random.Generator) -> Params:
        """Draw kernel kind, sigma_x, sigma_y, theta, scale, noise and jpeg_quality."""
        kind = "aniso" if rng.random() < self.aniso_probability else "iso"
        sigma_x = uniform(rng, self.sigma)
        if kind == "aniso":
            sigma_y, theta = uniform(rng, self.sigma), uniform(rng, (-math.pi, math.pi))
        else:
            sigma_y, theta = sigma_x, 0.0
        return {
            "kernel": kind,
            "kernel_size": self.kernel_size,
            "sigma_x": sigma_x,
            "sigma_y": sigma_y,
            "theta": theta,
            "scale": uniform(rng, self.scale),
            "noise": uniform(rng, self.noise),
            "jpeg_quality": int(uniform(rng, self.jpeg)),
        }

    def apply(self, image: np.ndarray, params: Params, rng: np.random.Generator) -> np.ndarray:
        """Degrade a uint8 HxWx3 RGB image (or floats in [0, 1]) to uint8 of the same shape."""
        pixels = to_float(as_rgb_uint8(image))
        height, width = pixels.shape[:2]
        kernel = gaussian_kernel(
            int(_param(params, "kernel_size")),
            float(_param(params, "sigma_x")),
            float(_param(params, "sigma_y")),
            float(_param(params, "theta")),
        )
        pixels = blur(pixels, kernel)
        scale = float(_param(params, "scale"))
        pixels = resize(pixels, width // scale, height // scale, "bilinear")
        pixels = add_gaussian_noise(pixels, float(_param(params, "noise")), rng)
        pixels = jpeg(pixels, int(_param(params, "jpeg_quality")))
        return to_uint8(resize(pixels, width, height, "bilinear"))

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> DegradedSample:
        params = self.sample(rng)
        return DegradedSample(self.apply(image, params, rng), params)


PRESETS: MappingProxyType[str, Degradation] = MappingProxyType(
    dict(
        zip(
            PRESET_NAMES,
            (
                PaperDegradation((0, 16), (1, 32), (0, 20), (30, 100), name="train"),
                PaperDegradation((0, 8), (1, 8), (0, 15), (60, 100), name="moderate"),
                PaperDegradation((8, 16), (8, 32), (0, 20), (30, 100), name="severe"),
                SecondOrderDegradation(),
            ),
            strict=True,
        )
    )
)


def degradation_by_name(name: str) -> Degradation:
    """The preset called `name`, or one sentence listing the known presets."""
    if name not in PRESETS:
        raise RefFaceError(f"Unknown degradation preset {name!r}; choose one of {', '.join(PRESETS)}.")
    return PRESETS[name]


_RANGE_KEYS = ("sigma", "scale", "noise", "jpeg")


def degradation_with_ranges(name: str, ranges: Mapping[str, object] | None = None) -> Degradation:
    """Preset `name` with some of its ranges replaced: sigma, scale, noise, jpeg as [low, high], kernel_size.

    Researchers tune the degradation per experiment (e.g. a toy image size, where the paper's 512-pixel
    blur and downscale would leave one flat colour) without writing a class.
    """
    degradation = degradation_by_name(name)
    if not ranges:
        return degradation
    if not isinstance(degradation, PaperDegradation):
        raise RefFaceError(f"Only the paper's presets take degradation ranges, not {name!r}.")
    known = (*_RANGE_KEYS, "kernel_size")
    changes: dict[str, object] = {}
    for key, value in ranges.items():
        if key not in known:
            raise RefFaceError(f"Unknown degradation range {key!r}; known: {', '.join(known)}.")
        if key == "kernel_size":
            if not isinstance(value, int) or isinstance(value, bool):
                raise RefFaceError(f"The degradation kernel_size must be an odd integer, not {value!r}.")
            changes[key] = value
            continue
        pair = tuple(value) if isinstance(value, (list, tuple)) else ()
        if len(pair) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in pair):
            raise RefFaceError(f"The degradation range {key!r} must be [low, high] numbers, not {value!r}.")
        changes[key] = (float(pair[0]), float(pair[1]))
    return replace(degradation, name=f"{degradation.name}-custom", **changes)


def sample_rng(seed: int, index: int) -> np.random.Generator:
    """The generator for image `index` under `seed`: each sample is reproducible on its own, in any order."""
    if int(seed) != seed or int(index) != index or seed < 0 or index < 0:
        raise RefFaceError(f"The seed and image index must be non-negative integers, not {seed} and {index}.")
    return np.random.default_rng([int(seed), int(index)])


def _resolve(degradation: Degradation | str) -> Degradation:
    return degradation_by_name(degradation) if isinstance(degradation, str) else degradation


def degrade(image: np.ndarray, degradation: Degradation | str, seed: int, index: int) -> DegradedSample:
    """Degrade one image reproducibly: the same (seed, index) gives the same bytes and params.

    Equivalent to `rng = sample_rng(seed, index); d.apply(image, d.sample(rng), rng)`.
    """
    return _resolve(degradation)(as_rgb_uint8(image), sample_rng(seed, index))


def degrade_tensor(
    images: torch.Tensor, degradation: Degradation | str, seed: int, indices: Sequence[int]
) -> torch.Tensor:
    """Degrade float BCHW (or CHW) images in [0, 1] through the numpy path; same shape, dtype and device.

    Pixels are rounded to 8 bits first and the result is 8-bit levels / 255, exactly what `degrade`
    gives for the same (seed, index), so on-the-fly training LQ matches files made by the CLI.
    """
    single = images.ndim == 3
    batch = images[None] if single else images
    if not batch.is_floating_point() or batch.ndim != 4 or batch.shape[1] != 3:
        raise RefFaceError(
            "The images to degrade must be float BCHW or CHW with 3 channels, "
            f"not {images.dtype} {tuple(images.shape)}."
        )
    if len(indices) != batch.shape[0]:
        raise RefFaceError(f"Got {len(indices)} image indices for a batch of {batch.shape[0]} images.")
    chosen = _resolve(degradation)
    pixels = (batch.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    outputs = [degrade(array, chosen, seed, int(index)).image for array, index in zip(pixels, indices, strict=True)]
    result = torch.from_numpy(np.stack(outputs)).permute(0, 3, 1, 2).float().div(255.0)
    result = result.to(device=images.device, dtype=images.dtype)
    return result[0] if single else result
