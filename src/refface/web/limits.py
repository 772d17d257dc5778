"""What the web page accepts: sizes that keep one upload from exhausting the server."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServeLimits:
    """Upload, image and queue limits of `refface serve` (all enforced server-side)."""

    max_request_bytes: int = 200 * 2**20  # one whole form, album included
    max_file_bytes: int = 30 * 2**20  # one photo
    max_pixels: int = 40_000_000  # decoded size of one photo (a 40-megapixel camera)
    max_references: int = 8
    max_album_photos: int = 200
    max_steps: int = 200
    max_pending: int = 4  # jobs waiting or running; more get "busy, try again"
    keep_seconds: float = 3600.0  # uploads and results are deleted this long after their last use
