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
from refface.imaging import image_from_bytes, pixels_in_header
from refface.photo.original import OriginalPhoto, original_from_bytes
from refface.web.limits import ServeLimits

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")


def label(name: str | None, fallback: str) -> str:
    """A safe, short label for a client-supplied file name (its base name, printable characters only)."""
    base = PurePosixPath((name or "").replace("\\", "/")).name
    cleaned = re.sub(r"[^\w.\- ()]", "_", base)[:80]
    return cleaned or fallback


def megabytes(size: int) -> str:
    """A size for a message, never rounded onto the limit it is compared with (31,457,281 bytes is not "30 MB")."""
    return f"{size // 2**20} MB" if size % 2**20 == 0 else f"{size:,} bytes"


def check_upload(data: bytes, name: str, limits: ServeLimits) -> int:
    """The photo's pixel count, read from its header before anything is decoded; one sentence for an empty,
    too large or unreadable upload."""
    if not data:
        raise RefFaceError(f"The upload {name} is empty.")
    if len(data) > limits.max_file_bytes:
        raise RefFaceError(
            f"The upload {name} is {megabytes(len(data))}; photos may be at most {megabytes(limits.max_file_bytes)}."
        )
    return pixels_in_header(data, name)


def within_budget(uploads: list[tuple[str, bytes]], budget: int, what: str, limits: ServeLimits) -> None:
    """Refuse, before decoding any, photos whose pixels together exceed `budget` (read from their headers)."""
    total = sum(check_upload(data, name, limits) for name, data in uploads)
    if total > budget:
        raise RefFaceError(f"{what} hold {total:,} pixels in all; this server takes at most {budget:,} at once.")


def decode_upload(data: bytes, name: str, limits: ServeLimits) -> Image.Image:
    """One uploaded photo as RGB, or one sentence naming it (empty, too large, not an image, too many pixels)."""
    check_upload(data, name, limits)
    return image_from_bytes(data, name, limits.max_pixels)


def decode_original(data: bytes, name: str, limits: ServeLimits) -> OriginalPhoto:
    """The photo to restore at its own depth with its metadata (given back in its own format), or one sentence."""
    check_upload(data, name, limits)
    return original_from_bytes(data, name, limits.max_pixels)


def unpack_album(data: bytes, name: str, folder: Path, limits: ServeLimits) -> tuple[int, list[str]]:
    """Decode the photos of an album zip into `folder` as 000.png, 001.png, ...; returns how many, and a note for
    each photo passed over (damaged, not an image, too large), as the command line passes over such photos.

    Member names are never used as paths (no zip-slip); members that are not images are skipped, each member's
    size is checked before it is read, so a zip bomb cannot fill memory, and the album's pixels together are
    checked from the photos' headers before any is decoded.
    """
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise RefFaceError(f"The album {name} is not a zip file.") from None
    folder.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    readable: list[tuple[str, bytes]] = []
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
                notes.append(f"passed over {member_label}: larger than {megabytes(limits.max_file_bytes)}.")
                continue
            try:
                payload = archive.read(member)
                check_upload(payload, member_label, limits)
            except RefFaceError as error:
                notes.append(f"passed over {member_label}: {error}")
                continue
            except (zipfile.BadZipFile, RuntimeError, OSError, EOFError, ValueError) as error:
                notes.append(f"passed over {member_label}: it could not be read from the zip ({error}).")
                continue
            readable.append((member_label, payload))
    within_budget(readable, limits.max_album_pixels, f"The photos of the album {name}", limits)
    count = 0
    for member_label, payload in readable:
        try:
            image = decode_upload(payload, member_label, limits)
        except RefFaceError as error:
            notes.append(f"passed over {member_label}: {error}")
            continue
        image.save(folder / f"{count:03d}.png")
        count += 1
    if count == 0:
        first = f"; {notes[0]}" if notes else " (JPEG, PNG, WebP, BMP or TIFF)."
        raise RefFaceError(f"The album {name} holds no photo this server can read{first}")
    return count, notes
