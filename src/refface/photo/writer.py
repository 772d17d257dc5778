"""Writing the photo the user keeps: in the input's format and depth, with its metadata, atomically.

8-bit photos go through Pillow with their ICC profile, EXIF, XMP and resolution (a JPEG with its own
quantisation tables, so it keeps its quality). 16-bit photos, which Pillow holds only as grey, are encoded by
OpenCV (PNG, with the metadata chunks added) or tifffile (TIFF). A grey file whose result is still grey is written
grey again.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, PngImagePlugin

from refface.errors import RefFaceError
from refface.files import atomic_output
from refface.imaging import SAVE_FORMATS
from refface.photo.original import TIFF_XMP, XMP_KEY, PhotoMetadata

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EXIF_HEADER = b"Exif\x00\x00"


def _still_grey(pixels: np.ndarray) -> bool:
    return bool(np.array_equal(pixels[..., 0], pixels[..., 1]) and np.array_equal(pixels[..., 0], pixels[..., 2]))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png_metadata_chunks(metadata: PhotoMetadata) -> bytes:
    """iCCP, eXIf, pHYs and an XMP iTXt chunk for what `metadata` holds (PNG's own places for them)."""
    chunks = b""
    if metadata.icc_profile:
        chunks += _chunk(b"iCCP", b"ICC profile\x00\x00" + zlib.compress(metadata.icc_profile))
    if metadata.exif:
        chunks += _chunk(b"eXIf", metadata.exif.removeprefix(EXIF_HEADER))
    if metadata.dpi:
        per_metre = [int(round(value / 0.0254)) for value in metadata.dpi]
        chunks += _chunk(b"pHYs", struct.pack(">IIB", per_metre[0], per_metre[1], 1))
    if metadata.xmp:
        chunks += _chunk(b"iTXt", XMP_KEY.encode("latin-1") + b"\x00\x00\x00\x00\x00" + metadata.xmp)
    return chunks


def _png_sixteen(pixels: np.ndarray, metadata: PhotoMetadata) -> bytes:
    """A 16-bit PNG (grey or RGB) with the metadata chunks right after its header."""
    image = pixels[..., 0] if pixels.shape[2] == 1 else cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise RefFaceError("OpenCV could not encode a 16-bit PNG.")
    data = encoded.tobytes()
    header_end = len(PNG_SIGNATURE) + 8 + 13 + 4  # signature, then IHDR's length, type, 13 bytes and CRC
    return data[:header_end] + _png_metadata_chunks(metadata) + data[header_end:]


def _tiff_sixteen(pixels: np.ndarray, metadata: PhotoMetadata) -> bytes:
    import tifffile

    from refface import __version__

    grey = pixels.shape[2] == 1
    extratags = [(TIFF_XMP, "B", len(metadata.xmp), metadata.xmp, True)] if metadata.xmp else []
    stream = io.BytesIO()
    tifffile.imwrite(
        stream,
        pixels[..., 0] if grey else pixels,
        photometric="minisblack" if grey else "rgb",
        iccprofile=metadata.icc_profile,
        resolution=metadata.dpi,
        resolutionunit="INCH" if metadata.dpi else None,
        compression="zlib" if metadata.tiff_compression else None,
        software=f"refface {__version__}",
        extratags=extratags,
    )
    return stream.getvalue()


def _pillow_options(image_format: str, metadata: PhotoMetadata) -> dict:
    options: dict = {}
    if metadata.icc_profile and image_format != "BMP":
        options["icc_profile"] = metadata.icc_profile
    if metadata.exif and image_format in ("JPEG", "PNG", "TIFF", "WEBP"):
        options["exif"] = metadata.exif
    if metadata.dpi and image_format in ("JPEG", "PNG", "TIFF", "BMP"):
        options["dpi"] = metadata.dpi
    if metadata.xmp:
        if image_format in ("JPEG", "WEBP"):
            options["xmp"] = metadata.xmp
        elif image_format == "PNG":
            info = PngImagePlugin.PngInfo()
            info.add_itxt(XMP_KEY, metadata.xmp.decode("utf-8", "replace"))
            options["pnginfo"] = info
        elif image_format == "TIFF":
            options["tiffinfo"] = {TIFF_XMP: metadata.xmp}
    if image_format == "JPEG":
        if metadata.quantization:  # the input's own tables: its quality, not a new one
            options["qtables"] = metadata.quantization
            if metadata.subsampling is not None:
                options["subsampling"] = metadata.subsampling
        else:
            options["quality"] = 95
    elif image_format == "WEBP":
        options["quality"] = 95
    elif image_format == "TIFF" and metadata.tiff_compression:
        options["compression"] = metadata.tiff_compression
    return options


def encode_photo(pixels: np.ndarray, metadata: PhotoMetadata, image_format: str) -> tuple[bytes, list[str]]:
    """The file bytes of a photo (uint8 or uint16 RGB) in `image_format` (PNG, JPEG, TIFF, WEBP, BMP) with the
    metadata that format can hold, and notes on what could not be kept."""
    notes: list[str] = []
    if metadata.grey_file and _still_grey(pixels):
        pixels = pixels[..., :1]
    if pixels.dtype == np.uint16 and image_format in ("PNG", "TIFF"):
        if image_format == "PNG":
            return _png_sixteen(pixels, metadata), notes
        if metadata.exif:
            notes.append("a 16-bit TIFF is written without the input's EXIF block (its ICC profile, XMP and "
                         "resolution are kept)")  # fmt: skip
        return _tiff_sixteen(pixels, metadata), notes
    if pixels.dtype == np.uint16:
        pixels = np.rint(pixels.astype(np.float32) / 257.0).astype(np.uint8)
        notes.append(f"{image_format} holds 8 bits per channel: the 16-bit photo was written at 8 bits")
    image = Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels)
    stream = io.BytesIO()
    image.save(stream, format=image_format, **_pillow_options(image_format, metadata))
    return stream.getvalue(), notes


def write_photo(pixels: np.ndarray, metadata: PhotoMetadata, path: str | Path) -> tuple[Path, list[str]]:
    """Write a photo atomically in the format its suffix names; returns the path and notes on what was not kept."""
    target = Path(path)
    image_format = SAVE_FORMATS.get(target.suffix.lower())
    if image_format is None:
        raise RefFaceError(f"The output file {target} must end in one of {', '.join(sorted(SAVE_FORMATS))}.")
    data, notes = encode_photo(pixels, metadata, image_format)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(target) as stream:
            stream.write(data)
    except OSError as error:
        raise RefFaceError(f"Could not write {target} ({error.strerror or error}).") from None
    return target, notes
