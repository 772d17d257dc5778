"""Small generated clips of a real (public-domain) face for the video tests: the astronaut moving along a
known path, or standing still, with a generated sound track."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from skimage.data import astronaut

from refface.video.synthetic_clip import ClipMotion, render_frames, smooth_path, tone, write_clip

SIZE = (256, 256)
FPS = 24


def moving_clip(
    path: Path, frames: int = 24, size: tuple[int, int] = SIZE, sound: bool = True, **options
) -> tuple[Path, ClipMotion]:
    """The astronaut drifting, turning and zooming; H.264 with AAC sound unless `options` say otherwise."""
    motion = smooth_path(frames, size, 512)
    pixels = render_frames(astronaut(), motion, size)
    return write_clip(pixels, path, fps=FPS, sound=tone(frames / FPS) if sound else None, **options), motion


def still_clip(path: Path, frames: int = 12, size: tuple[int, int] = SIZE, noise: float = 0.0) -> Path:
    """One picture repeated, stored exactly (FFV1); with `noise`, every frame its own sensor noise."""
    motion = smooth_path(frames, size, 512, still=True)
    quality = 100 if noise == 0 else 70
    pixels = render_frames(astronaut(), motion, size, noise=noise, jpeg_quality=quality)
    return write_clip(pixels, path, fps=FPS, sound=tone(frames / FPS), codec="ffv1")


def faceless_clip(path: Path, frames: int = 8) -> Path:
    rng = np.random.default_rng(5)
    pixels = [rng.integers(0, 255, (*SIZE[::-1], 3), dtype=np.uint8) for _ in range(frames)]
    return write_clip(pixels, path, fps=FPS, sound=tone(frames / FPS))
