"""What the web page accepts: sizes that keep one upload from exhausting the server."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from refface.errors import RefFaceError


@dataclass(frozen=True)
class ServeLimits:
    """Upload, image and queue limits of `refface serve` (all enforced server-side)."""

    max_request_bytes: int = 200 * 2**20  # one whole form, album included
    max_file_bytes: int = 30 * 2**20  # one photo
    max_pixels: int = 40_000_000  # decoded size of one photo (a 40-megapixel camera)
    max_request_pixels: int = 320_000_000  # all photos of one request together (8 photos of 40 megapixels)
    max_album_pixels: int = 1_000_000_000  # all photos of one album zip together
    max_references: int = 8
    max_album_photos: int = 200
    max_steps: int = 200
    max_pending: int = 4  # jobs waiting or running; more get "busy, try again"
    max_kept_photos: int = 32  # uploaded photos kept between the page's steps, least recently used dropped first
    max_kept_bytes: int = 1 << 30  # and their decoded pixels together
    max_kept_people: int = 32  # people sets kept (their reference crops; an album's files on disk)
    keep_seconds: float = 3600.0  # uploads and results are deleted this long after their last use

    def __post_init__(self) -> None:
        for limit in fields(self):
            value = getattr(self, limit.name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
                raise RefFaceError(f"The server limit {limit.name} must be a positive finite number, got {value!r}.")

    @classmethod
    def from_megabytes(cls, max_upload_mb: float, max_pending: int) -> ServeLimits:
        """The limits `refface serve --max-upload-mb --max-pending` ask for (a request may carry 8 photos)."""
        if isinstance(max_upload_mb, bool) or not isinstance(max_upload_mb, int | float):
            raise RefFaceError(f"--max-upload-mb must be a positive number of megabytes, got {max_upload_mb!r}.")
        if not math.isfinite(max_upload_mb) or not 0 < max_upload_mb <= 4096:
            raise RefFaceError(f"--max-upload-mb must be more than 0 and at most 4096, got {max_upload_mb}.")
        if isinstance(max_pending, bool) or not isinstance(max_pending, int) or not 1 <= max_pending <= 1000:
            raise RefFaceError(f"--max-pending must be a whole number from 1 to 1000, got {max_pending!r}.")
        file_bytes = int(max_upload_mb * 2**20)
        return cls(max_file_bytes=file_bytes, max_request_bytes=file_bytes * 8, max_pending=max_pending)
