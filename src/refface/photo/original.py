"""A photo as its file holds it: every bit of its pixels (8 or 16 per channel) and the metadata archives keep.

Faces are found and restored on an 8-bit RGB copy; the photo given back is built on the original pixels, so a
16-bit scan stays 16-bit and its ICC profile, EXIF (date taken, camera, captions), XMP, resolution and, for a
JPEG, its quantisation tables go into the written file. The pixels are upright (EXIF orientation applied), so
the EXIF written with them says so.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from refface.errors import RefFaceError, require_file, short_reason
from refface.imaging import MAX_PIXELS, frame_count, image_from_bytes, load_image

ORIENTATION, SOFTWARE = 0x0112, 0x0131  # EXIF tags
XMP_KEY = "XML:com.adobe.xmp"  # where PNG keeps XMP (an iTXt chunk); Pillow reads it into info under this key
TIFF_XMP = 700


@dataclass(frozen=True)
class PhotoMetadata:
    """What a photo's file says besides its pixels, ready to be written again.

    `format`: Pillow's name for the file's format. `bits`: 8 or 16 per channel. `grey_file`: the file holds one
    channel (L or I;16). `exif`: the EXIF block with the orientation set to upright. `quantization` and
    `subsampling`: a JPEG's, so it is written again at its own quality.
    """

    format: str | None = None
    bits: int = 8
    grey_file: bool = False
    icc_profile: bytes | None = None
    exif: bytes | None = None
    xmp: bytes | None = None
    dpi: tuple[float, float] | None = None
    quantization: dict | None = None
    subsampling: int | None = None
    tiff_compression: str | None = None


@dataclass(frozen=True)
class OriginalPhoto:
    """A photo's upright pixels at the file's own depth (uint8 or uint16, [H, W, 3]) and its metadata."""

    pixels: np.ndarray
    metadata: PhotoMetadata = field(default_factory=PhotoMetadata)
    frames: int = 1

    @cached_property
    def rgb8(self) -> np.ndarray:
        """The 8-bit RGB copy faces are found and restored on (made once: the search, the tone and the page read
        it)."""
        if self.pixels.dtype == np.uint8:
            return self.pixels
        return np.rint(self.pixels.astype(np.float32) / 257.0).astype(np.uint8)

    @property
    def top(self) -> float:
        """The largest pixel value (255 or 65535)."""
        return 65535.0 if self.pixels.dtype == np.uint16 else 255.0

    @classmethod
    def from_pixels(cls, pixels: Image.Image | np.ndarray) -> OriginalPhoto:
        """A photo known only by its pixels (uint8 RGB, or an image): nothing else to keep."""
        array = np.asarray(pixels.convert("RGB") if isinstance(pixels, Image.Image) else pixels)
        if array.dtype not in (np.uint8, np.uint16) or array.ndim != 3 or array.shape[2] != 3:
            shape = list(array.shape)
            raise RefFaceError(f"A photo's pixels are uint8 or uint16 [H, W, 3], got {array.dtype} {shape}.")
        frames = frame_count(pixels) if isinstance(pixels, Image.Image) else 1
        return cls(array, PhotoMetadata(), frames)


def _sixteen_bit(opened: Image.Image) -> bool:
    if opened.mode.startswith("I;16"):
        return True
    tile = opened.tile[0] if opened.tile else None
    args = getattr(tile, "args", None) if tile is not None else None
    rawmode = args[0] if isinstance(args, tuple) else args
    return opened.format in ("PNG", "TIFF") and isinstance(rawmode, str) and ";16" in rawmode


def _exif_upright(opened: Image.Image) -> bytes | None:
    exif = opened.getexif()
    if not len(exif):
        return None
    exif[ORIENTATION] = 1
    from refface import __version__

    exif[SOFTWARE] = f"refface {__version__}"
    return exif.tobytes()


def _xmp(opened: Image.Image) -> bytes | None:
    value = opened.info.get("xmp") or opened.info.get(XMP_KEY)
    if value is None and opened.format == "TIFF":
        value = getattr(opened, "tag_v2", {}).get(TIFF_XMP)
    if isinstance(value, str):
        value = value.encode("utf-8")
    if isinstance(value, tuple):  # a TIFF tag of bytes read as a tuple
        value = bytes(value)
    return value or None


def read_metadata(opened: Image.Image) -> PhotoMetadata:
    """The metadata of an opened (not necessarily decoded) image file."""
    quantization = subsampling = None
    if opened.format == "JPEG":
        from PIL import JpegImagePlugin

        quantization = getattr(opened, "quantization", None) or None
        subsampling = JpegImagePlugin.get_sampling(opened)
    dpi = opened.info.get("dpi")
    compression = opened.info.get("compression") if opened.format == "TIFF" else None
    return PhotoMetadata(
        format=opened.format,
        bits=16 if _sixteen_bit(opened) else 8,
        grey_file=opened.mode in ("L", "LA", "1") or opened.mode.startswith("I;16"),
        icc_profile=opened.info.get("icc_profile") or None,
        exif=_exif_upright(opened),
        xmp=_xmp(opened),
        dpi=(float(dpi[0]), float(dpi[1])) if dpi else None,
        quantization=quantization,
        subsampling=subsampling if subsampling is not None and subsampling >= 0 else None,
        tiff_compression=compression if isinstance(compression, str) and compression != "raw" else None,
    )


def upright(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Pixels as EXIF `orientation` (1-8) says they are shown, as Pillow's exif_transpose turns them."""
    turns = {3: 2, 6: 3, 8: 1}
    if orientation == 2:
        return pixels[:, ::-1]
    if orientation == 4:
        return pixels[::-1]
    if orientation in turns:
        return np.rot90(pixels, turns[orientation])
    if orientation == 5:
        return pixels.swapaxes(0, 1)
    if orientation == 7:
        return np.rot90(pixels.swapaxes(0, 1), 2)
    return pixels


def _decode_sixteen(data: bytes, opened: Image.Image, orientation: int, label: str) -> np.ndarray:
    """A 16-bit file's pixels as uint16 RGB (grey repeated, alpha laid over white), upright."""
    if opened.mode.startswith("I;16"):
        opened.load()
        pixels = np.asarray(opened, dtype=np.uint16)
    else:
        pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        if pixels is None or pixels.dtype != np.uint16:
            raise RefFaceError(f"{label} is a 16-bit image refface cannot decode at full depth.")
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[..., None], 3, axis=2)
    elif pixels.shape[2] == 4:  # BGRA: over white, as 8-bit photos are
        alpha = pixels[..., 3:].astype(np.float32) / 65535.0
        pixels = np.rint(pixels[..., :3] * alpha + 65535.0 * (1.0 - alpha)).astype(np.uint16)[..., ::-1]
    else:
        pixels = pixels[..., ::-1]  # BGR -> RGB
    return np.ascontiguousarray(upright(pixels, orientation))


def _original(data: bytes, eight_bit: Image.Image, label: str) -> OriginalPhoto:
    """The photo from its file's bytes, given the 8-bit upright copy already decoded (and checked) from them."""
    try:
        with warnings.catch_warnings(), Image.open(io.BytesIO(data)) as opened:
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            orientation = int(opened.getexif().get(ORIENTATION, 1) or 1)  # before the metadata sets it upright
            metadata = read_metadata(opened)
            pixels = _decode_sixteen(data, opened, orientation, label) if metadata.bits == 16 else None
    except RefFaceError:
        raise
    except (OSError, SyntaxError, ValueError) as error:
        raise RefFaceError(f"{label} is damaged or unreadable ({short_reason(error)}).") from None
    if pixels is None:
        pixels = np.asarray(eight_bit)
    return OriginalPhoto(pixels, metadata, frame_count(eight_bit))


def load_original(path: str | Path, max_pixels: int = MAX_PIXELS) -> OriginalPhoto:
    """Read a photo file with every bit of its pixels and its metadata, or fail with one sentence naming it."""
    source = require_file(path, "image")
    eight_bit = load_image(source, max_pixels)  # every check of a user's photo happens here first
    try:
        data = source.read_bytes()
    except OSError as error:
        raise RefFaceError(f"The image {source} could not be read ({error.strerror or error}).") from None
    return _original(data, eight_bit, f"The image {source}")


def original_from_bytes(data: bytes, name: str, max_pixels: int = MAX_PIXELS) -> OriginalPhoto:
    """An uploaded photo with every bit of its pixels and its metadata; `name` only labels the messages."""
    return _original(data, image_from_bytes(data, name, max_pixels), f"The image {name}")


def as_original(photo: OriginalPhoto | Image.Image | np.ndarray) -> OriginalPhoto:
    """A photo as an `OriginalPhoto` (one known only by its pixels keeps nothing else)."""
    return photo if isinstance(photo, OriginalPhoto) else OriginalPhoto.from_pixels(photo)

