"""Turning uploaded bytes into images without ever using a name the client sent as a path.

The client's file names only label messages (reduced to a short, printable base name); anything
written to disk gets a name the server makes up, inside a folder the server made.
"""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path, PurePosixPath

from PIL import Image

from refface.errors import RefFaceError
from refface.imaging import image_from_bytes
from refface.web.limits import ServeLimits

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")


def label(name: str | None, fallback: str) -> str:
    """A safe, short label for a client-supplied file name (its base name, printable characters only)."""
    base = PurePosixPath((name or "").replace("\\", "/")).name
    cleaned = re.sub(r"[^\w.\- ()]", "_", base)[:80]
    return cleaned or fallback


def decode_upload(data: bytes, name: str, limits: ServeLimits) -> Image.Image:
    """One uploaded photo as RGB, or one sentence naming it (empty, too large, not an image, too many pixels)."""
    if not data:
        raise RefFaceError(f"The upload {name} is empty.")
    if len(data) > limits.max_file_bytes:
        limit = limits.max_file_bytes / 2**20
        raise RefFaceError(f"The upload {name} is {len(data) / 2**20:.1f} MB; photos may be at most {limit:.0f} MB.")
    return image_from_bytes(data, name, limits.max_pixels)


def unpack_album(data: bytes, name: str, folder: Path, limits: ServeLimits) -> int:
    """Decode the photos of an album zip into `folder` as 000.png, 001.png, ...; returns how many.

    Member names are never used as paths (no zip-slip); members that are not images are skipped, and
    each member's size is checked before it is read, so a zip bomb cannot fill memory.
    """
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise RefFaceError(f"The album {name} is not a zip file.") from None
    folder.mkdir(parents=True, exist_ok=True)
    count = 0
    with archive:
        members = [m for m in archive.infolist() if not m.is_dir() and m.filename.lower().endswith(IMAGE_SUFFIXES)]
        members = [m for m in members if not PurePosixPath(m.filename).name.startswith(".")]
        if len(members) > limits.max_album_photos:
            raise RefFaceError(
                f"The album {name} has {len(members)} photos; at most {limits.max_album_photos} are read."
            )
        for member in members:
            member_label = f"{label(member.filename, 'photo')} in {name}"
            if member.file_size > limits.max_file_bytes:
                raise RefFaceError(f"The photo {member_label} is larger than {limits.max_file_bytes / 2**20:.0f} MB.")
            try:
                payload = archive.read(member)
            except (zipfile.BadZipFile, RuntimeError, OSError, EOFError) as error:
                raise RefFaceError(f"The photo {member_label} could not be read from the zip ({error}).") from None
            image = decode_upload(payload, member_label, limits)
            image.save(folder / f"{count:03d}.png")
            count += 1
    if count == 0:
        raise RefFaceError(f"The album {name} holds no photos (JPEG, PNG, WebP, BMP or TIFF).")
    return count
