"""Reading user photos into RGB and writing results safely.

Real photos arrive as palette/RGBA/grayscale/16-bit/CMYK files, rotated by an EXIF tag, or as
hostile decompression bombs; every such case becomes either a correct RGB image or one clear
sentence. Results are written atomically and never over an input.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from refface.errors import RefFaceError, require_file, short_reason
from refface.files import atomic_output

# Larger than any camera photo (about 16k x 16k) but far below what would exhaust memory.
MAX_PIXELS = 250_000_000
FRAMES_KEY = "refface_frames"  # image.info: how many frames or pages the file held (the first is the image)
SAVE_FORMATS = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".webp": "WEBP",
    ".bmp": "BMP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
}


def _flatten_alpha(image: Image.Image) -> Image.Image:
    """Composite transparent pixels over white, the usual background of a scanned photo."""
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit grayscale: scale 0..65535 to 0..255 (Pillow's convert() would clip instead).
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or values.max() > 255 else 255.0
        eight_bit = np.clip(np.round(values * (255.0 / top)), 0, 255).astype(np.uint8)
        return Image.fromarray(eight_bit).convert("RGB")
    if mode == "F":
        values = np.asarray(image, dtype=np.float64)
        scale = 255.0 if values.max() <= 1.0 else 1.0
        return Image.fromarray(np.clip(np.round(values * scale), 0, 255).astype(np.uint8)).convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info):
        return _flatten_alpha(image)
    return image.convert("RGB")


def load_image(path: str | Path, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open an image file as upright 8-bit RGB, or fail with one sentence naming the file."""
    source = require_file(path, "image")
    return _decode(source, f"The image {source}", f"The file {source}", max_pixels)


def pixels_in_header(data: bytes, name: str) -> int:
    """How many pixels an image file holds, read from its header (nothing is decoded), or one sentence."""
    try:
        with warnings.catch_warnings(), Image.open(io.BytesIO(data)) as opened:
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            width, height = opened.size
    except Image.DecompressionBombError:
        raise RefFaceError(f"The image {name} is too large to decode safely (a possible decompression bomb).") from None
    except UnidentifiedImageError:
        raise RefFaceError(f"The file {name} is not an image format refface can read.") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise RefFaceError(f"The image {name} is damaged or unreadable ({short_reason(error)}).") from None
    return width * height


def frame_count(image: Image.Image) -> int:
    """How many frames (an animated GIF or WebP) or pages (a multi-page TIFF) the file of `image` held: refface
    restores the first, and says so."""
    return int(image.info.get(FRAMES_KEY, 1))


def image_from_bytes(data: bytes, name: str, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode an uploaded image (bytes) as upright 8-bit RGB; `name` only labels the messages."""
    return _decode(io.BytesIO(data), f"The image {name}", f"The file {name}", max_pixels)


def _decode(source, image_label: str, file_label: str, max_pixels: int) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as opened:
                width, height = opened.size
                if width * height > max_pixels:
                    raise RefFaceError(
                        f"{image_label} is {width}x{height} pixels, more than the limit of {max_pixels:,}; "
                        "it may be a decompression bomb."
                    )
                frames = int(getattr(opened, "n_frames", 1) or 1)
                opened.load()
                image = ImageOps.exif_transpose(opened) or opened
                image = _to_rgb(image)
                image.load()
                image.info[FRAMES_KEY] = frames
    except RefFaceError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise RefFaceError(f"{image_label} is too large to decode safely (a possible decompression bomb).") from None
    except UnidentifiedImageError:
        raise RefFaceError(f"{file_label} is not an image format refface can read.") from None
    except (OSError, SyntaxError, ValueError) as error:
        reason = short_reason(error)
        raise RefFaceError(f"{image_label} is damaged or unreadable ({reason}).") from None
    if image.width < 1 or image.height < 1:
        raise RefFaceError(f"{image_label} is empty.")
    return image


def as_rgb_array(photo: Image.Image | np.ndarray) -> np.ndarray:
    """A photo as the uint8 [H, W, 3] array the face tools work on."""
    return np.asarray(photo.convert("RGB") if isinstance(photo, Image.Image) else photo, dtype=np.uint8)


def to_model_input(images: Iterable[Image.Image], size: int) -> torch.Tensor:
    """RGB images -> [B, 3, size, size] in [-1, 1], resized as the official script does (PIL bicubic)."""
    tensors = []
    for image in images:
        if image.mode != "RGB":
            image = _to_rgb(image)
        if image.size != (size, size):
            image = image.resize((size, size), Image.Resampling.BICUBIC)
        array = np.asarray(image, dtype=np.float32)
        tensors.append(torch.from_numpy(array).permute(2, 0, 1) / 127.5 - 1.0)
    return torch.stack(tensors)


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """[B, 3, H, W] in [0, 1] -> 8-bit images, truncating like torchvision's to_pil_image (official output)."""
    array = (images.detach().float().clamp(0, 1).cpu() * 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(a) for a in array]


def check_output_path(output: str | Path, inputs: Iterable[str | Path], overwrite: bool = False) -> Path:
    """Validate where a result goes: a known image extension, not an input, not an existing file."""
    target = Path(output)
    if target.is_dir():
        raise RefFaceError(
            f"The output path {target} is a directory; give a file name such as {target / 'restored.png'}."
        )
    if target.suffix.lower() not in SAVE_FORMATS:
        raise RefFaceError(
            f"The output file {target} must end in one of {', '.join(sorted(SAVE_FORMATS))} to choose an image format."
        )
    for source in inputs:
        source = Path(source)
        same_file = source.exists() and target.exists() and os.path.samefile(source, target)
        if same_file or source.resolve() == target.resolve():
            raise RefFaceError(f"The output file {target} is also an input; refface never overwrites its inputs.")
    if target.exists() and not overwrite:
        raise RefFaceError(f"The output file {target} already exists; pass --overwrite to replace it.")
    return target


def save_image(image: Image.Image, path: str | Path) -> Path:
    """Write `image` atomically: a temporary file in the same folder, renamed into place."""
    target = Path(path)
    image_format = SAVE_FORMATS.get(target.suffix.lower())
    if image_format is None:
        raise RefFaceError(f"The output file {target} must end in one of {', '.join(sorted(SAVE_FORMATS))}.")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(target) as stream:
            image.save(stream, format=image_format, **({"quality": 95} if image_format in ("JPEG", "WEBP") else {}))
    except OSError as error:
        raise RefFaceError(f"Could not write {target} ({error.strerror or error}).") from None
    return target


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """An HxWxC array at size x size: area averaging when shrinking (no aliasing), bicubic otherwise."""
    height, width = image.shape[:2]
    if (height, width) == (size, size):
        return image
    interpolation = cv2.INTER_AREA if height >= size and width >= size else cv2.INTER_CUBIC
    return cv2.resize(image, (size, size), interpolation=interpolation)
