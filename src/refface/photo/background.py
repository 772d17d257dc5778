"""The background of an enlarged photo: a super-resolution model loaded with spandrel, tiled, or a Lanczos resize.

spandrel is the library ComfyUI, AUTOMATIC1111 and chaiNNer load upscalers with: it reads Real-ESRGAN's released
files and most other super-resolution checkpoints users already have, and says which architecture it found. The
model runs on tiles with an overlap (each tile's margin is cut away again, so no seam), at the tile size the
memory at hand allows, in half precision on a GPU where the model supports it; its own scale (x2, x4) is then
resized to the scale asked for.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from refface.errors import RefFaceError, short_reason
from refface.photo.options import RELEASED_MODELS, PhotoOutput
from refface.weights import DownloadFailed, WeightFile, cache_dir, ensure_weights

if TYPE_CHECKING:
    import torch

_RELEASE = "https://github.com/xinntao/Real-ESRGAN/releases/download"
_LICENCE = "BSD 3-Clause licence (Real-ESRGAN)"
REALESRGAN_MODELS = {
    # The light model: 1.2 M parameters, about 15 times less work per pixel than x4plus; the default.
    "general-x4v3": WeightFile(
        "realesr-general-x4v3.pth", f"{_RELEASE}/v0.2.5.0/realesr-general-x4v3.pth",
        "8dc7edb9ac80ccdc30c3a5dca6616509367f05fbc184ad95b731f05bece96292", _LICENCE,
    ),
    "x2plus": WeightFile(
        "RealESRGAN_x2plus.pth", f"{_RELEASE}/v0.2.1/RealESRGAN_x2plus.pth",
        "49fafd45f8fd7aa8d31ab2a22d14d91b536c34494a5cfe31eb5d89c2fa266abb", _LICENCE,
    ),
    "x4plus": WeightFile(
        "RealESRGAN_x4plus.pth", f"{_RELEASE}/v0.1.0/RealESRGAN_x4plus.pth",
        "4fa0d38905f75ac06eb49a7951b426670021be3018265fd191d2125df9d682f1", _LICENCE,
    ),
}  # fmt: skip
DEFAULT_MODEL = RELEASED_MODELS[0]
TILE_PAD = 40  # input pixels of overlap on each side of a tile: the light model's whole receptive field (34)
FEATURE_CHANNELS = 64  # a Real-ESRGAN-sized network's feature channels, for the memory estimate


def bytes_per_input_pixel(scale: int) -> int:
    """Working memory per input pixel of a Real-ESRGAN-sized model (float32): features at the input's size and
    at the output's, a few held at once."""
    return 4 * (8 * FEATURE_CHANNELS + 2 * FEATURE_CHANNELS * scale * scale)


def free_memory(device: torch.device) -> int:
    """Bytes the model may use: half of the GPU's free memory, or a quarter of the machine's available memory."""
    import torch

    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0] // 2)
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        available = 4 << 30
    return int(available // 4)


def automatic_tile(scale: int, device: torch.device) -> int:
    """The largest tile side (a multiple of 32, at least 128) whose work fits the memory at hand."""
    side = math.isqrt(max(free_memory(device) // bytes_per_input_pixel(scale), 1))
    return max(128, side // 32 * 32)


def _tiles(height: int, width: int, tile: int, pad: int):
    """(inner box, padded box) of each tile, as (top, left, bottom, right) in input pixels; one tile when `tile`
    is 0 or the image fits."""
    if tile <= 0 or (height <= tile and width <= tile):
        yield (0, 0, height, width), (0, 0, height, width)
        return
    for top in range(0, height, tile):
        for left in range(0, width, tile):
            bottom, right = min(top + tile, height), min(left + tile, width)
            padded = (max(top - pad, 0), max(left - pad, 0), min(bottom + pad, height), min(right + pad, width))
            yield (top, left, bottom, right), padded


def _tile_outputs(model, image: torch.Tensor, scale: int, tile: int, pad: int):
    """Each tile's output, cut back to its inner box, with where it goes in the enlarged image."""
    _, _, height, width = image.shape
    for (top, left, bottom, right), (y0, x0, y1, x1) in _tiles(height, width, tile, pad):
        result = model(image[:, :, y0:y1, x0:x1])
        inner = result[:, :, (top - y0) * scale : (bottom - y0) * scale, (left - x0) * scale : (right - x0) * scale]
        yield (top * scale, left * scale, bottom * scale, right * scale), inner


def upscale_tiled(model, image: torch.Tensor, scale: int, tile: int, pad: int = TILE_PAD) -> torch.Tensor:
    """`model` ([1, C, h, w] -> [1, C, h*scale, w*scale]) over `image` ([1, C, H, W]) in tiles of `tile` input
    pixels, each run with `pad` pixels of its neighbours around it and cut back; `tile` 0: all at once."""
    import torch

    _, _, height, width = image.shape
    output = None
    for (top, left, bottom, right), inner in _tile_outputs(model, image, scale, tile, pad):
        if output is None:
            output = torch.empty((1, inner.shape[1], height * scale, width * scale), dtype=inner.dtype,
                                 device=inner.device)  # fmt: skip
        output[:, :, top:bottom, left:right] = inner
    return output


def upscale_pixels(model, pixels: np.ndarray, tile: int, pad: int = TILE_PAD) -> np.ndarray:
    """An RGB photo (uint8 or uint16) through `model` (a spandrel descriptor) in tiles, at the photo's depth: each
    tile's output goes straight into the enlarged array, so memory holds one tile's floats, not the whole
    enlarged photo's."""
    import torch

    top_value = 65535.0 if pixels.dtype == np.uint16 else 255.0
    height, width = pixels.shape[:2]
    scale = model.scale
    image = torch.from_numpy(np.ascontiguousarray(pixels)).to(model.device).permute(2, 0, 1)[None]
    image = (image.float() / top_value).to(model.dtype)
    enlarged = np.empty((height * scale, width * scale, 3), pixels.dtype)
    with torch.inference_mode():
        for (y0, x0, y1, x1), inner in _tile_outputs(model, image, scale, tile, pad):
            values = inner[0].permute(1, 2, 0).float().mul_(top_value).round_().clamp_(0, top_value)
            enlarged[y0:y1, x0:x1] = values.cpu().numpy().astype(pixels.dtype)
    return enlarged


def resize(pixels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """An image at `shape` (height, width): Lanczos to enlarge, area averaging to shrink, any depth."""
    if pixels.shape[:2] == tuple(shape):
        return pixels
    shrinking = shape[0] < pixels.shape[0] and shape[1] < pixels.shape[1]
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LANCZOS4
    return cv2.resize(pixels, (shape[1], shape[0]), interpolation=interpolation)


def load_upscaler(path: str | Path):
    """A super-resolution checkpoint through spandrel (its ImageModelDescriptor), or one sentence naming the file."""
    import spandrel

    source = Path(path)
    if not source.is_file():
        raise RefFaceError(f"The background model {source} does not exist.")
    try:
        descriptor = spandrel.ModelLoader().load_from_file(source)
    except Exception as error:  # spandrel raises many kinds for files that are not models it knows
        raise RefFaceError(
            f"The file {source} is not a super-resolution model spandrel can load ({short_reason(error)})."
        ) from None
    rgb_in_and_out = descriptor.input_channels == 3 and descriptor.output_channels == 3
    if not isinstance(descriptor, spandrel.ImageModelDescriptor) or not rgb_in_and_out or descriptor.scale < 1:
        raise RefFaceError(f"The file {source} holds a {descriptor.architecture.name} model, not an RGB upscaler.")
    return descriptor.eval()


def cached_upscaler(device: str | torch.device = "cpu", name: str = DEFAULT_MODEL):
    """The released Real-ESRGAN model `name` loaded on `device` when its weights are already in the cache (a
    server offers it then), else None: nothing is downloaded."""
    weight = REALESRGAN_MODELS[name]
    if not (cache_dir() / weight.name).is_file():
        return None
    return _on_device(load_upscaler(ensure_weights(weight, progress=False)), device)


@dataclass
class Background:
    """Draws a photo's background at the output size: with a super-resolution model (loaded on first use, or
    `loaded` already) where the options ask for one, else with a resize. `notes` gathers what the user should know
    (once each)."""

    options: PhotoOutput
    device: str | torch.device = "cpu"
    progress: bool = True
    loaded: object = None
    notes: list[str] = field(default_factory=list)
    _model: object = None
    _tried: bool = False

    def take_notes(self) -> list[str]:
        """The notes not yet told (each is told once, with the first photo it concerns)."""
        notes, self.notes = self.notes, []
        return notes

    def model_name(self) -> str:
        return self.options.background_model or DEFAULT_MODEL

    def prepare(self) -> None:
        """Load a model the options insist on (a named file, or --background realesrgan) now, before any slow work:
        a bad file or a failed download is quick to hear of."""
        if self.options.background == "realesrgan" or self.options.background_model is not None:
            self.model()

    def uses_model(self, scale: float) -> bool:
        """Whether a model draws the background at `scale` (auto: only to enlarge, or when a file was named)."""
        if self.options.background in ("lanczos", "none"):
            return False
        plain_size = scale == 1.0 and self.options.background_model is None
        return not (self.options.background == "auto" and plain_size)

    def model(self):
        """The super-resolution model (None where `auto` could not get Real-ESRGAN's weights: Lanczos, noted)."""
        if self._tried:
            return self._model
        self._tried = True
        if self.loaded is not None:
            self._model = self.loaded
            return self._model
        name = self.model_name()
        try:
            if name in REALESRGAN_MODELS:
                path = ensure_weights(REALESRGAN_MODELS[name], progress=self.progress)
            else:
                path = Path(name)
        except DownloadFailed as failed:
            if self.options.background != "auto":
                raise
            self.notes.append(
                f"Real-ESRGAN's weights are not at hand ({failed.reason}); the background was enlarged with Lanczos "
                "(`refface download --background` fetches them)."
            )
            return None
        self._model = _on_device(load_upscaler(path), self.device)
        return self._model

    def draw(self, pixels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """The photo (uint8 or uint16 RGB) at `shape`, by the model or a resize, at the photo's depth."""
        scale = shape[0] / pixels.shape[0]
        descriptor = self.model() if self.uses_model(scale) else None
        if descriptor is None:
            return resize(pixels, shape)
        return resize(self._run(descriptor, pixels), shape)

    def _run(self, descriptor, pixels: np.ndarray) -> np.ndarray:
        tile = self.options.tile
        if tile is None:
            tile = automatic_tile(descriptor.scale, descriptor.device)
        return upscale_pixels(descriptor, pixels, tile)


def _on_device(descriptor, device):
    """The model on `device`, in half precision on a GPU where it supports it (bfloat16 where only that)."""
    import torch

    device = torch.device(device)
    descriptor.to(device)
    if device.type == "cuda":
        if descriptor.supports_half:
            descriptor.half()
        elif descriptor.supports_bfloat16:
            descriptor.bfloat16()
    return descriptor
