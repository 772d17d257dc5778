"""Black-and-white and toned (sepia, cyanotype) photos: recognised from their chroma, and kept so.

The references are usually colour photos and the model copies appearance from them, so a face restored in a grey
photo can come out in colour. A photo's tone is read from the chroma of the whole photo (BT.601 YCbCr): a grey
photo has none, a toned one has chroma that depends on luminance alone (one hue per brightness). Restored pixels
are mapped into that tone by keeping their luminance and taking the photo's chroma for it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GREY_CHROMA = 3.0  # 99th percentile of chroma (8-bit units) below which a photo is grey: JPEG noise stays under it
TONED_SPREAD = 6.0  # 95th percentile of chroma off the photo's luminance->chroma curve below which it is toned
LUMA_BINS = 16
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)
_CB, _CR = 0.564, 0.713  # Cb = (B - Y) * 0.564, Cr = (R - Y) * 0.713 (full range)


def _luma_chroma(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(Y [N], CbCr [N, 2]) of RGB pixels in 0..255."""
    pixels = rgb.reshape(-1, 3).astype(np.float32)
    luma = pixels @ _LUMA
    chroma = np.stack([(pixels[:, 2] - luma) * _CB, (pixels[:, 0] - luma) * _CR], axis=1)
    return luma, chroma


def _sample(rgb: np.ndarray, most: int = 1 << 20) -> np.ndarray:
    """At most `most` pixels of a photo, evenly spread (a 100-megapixel scan is read in a moment)."""
    pixels = rgb.reshape(-1, 3)
    step = max(1, len(pixels) // most)
    return pixels[::step]


@dataclass(frozen=True)
class PhotoTone:
    """A photo's tone: "colour", "grey" or "toned"; a toned photo's chroma for each luminance (`curve`, [bins, 2]
    at bin centres over 0..255)."""

    kind: str
    curve: np.ndarray | None = None

    @property
    def kept(self) -> bool:
        """Whether restored pixels are mapped into this tone."""
        return self.kind != "colour"

    def describe(self) -> str:
        if self.kind == "grey":
            return "the photo is black-and-white: its restored faces are kept grey (--colour restore gives them colour)"
        if self.kind == "toned":
            hue = float(np.degrees(np.arctan2(*self.curve.mean(axis=0)[::-1])))
            return (
                f"the photo is toned (one hue, {hue:.0f} degrees in CbCr): its restored faces take its tone "
                "(--colour restore gives them their own colours)"
            )
        return ""

    def apply(self, rgb: np.ndarray) -> np.ndarray:
        """RGB pixels (float, 0..255, [..., 3]) in this tone: their luminance, the photo's chroma for it."""
        if not self.kept:
            return rgb
        shape = rgb.shape
        luma, _ = _luma_chroma(rgb)
        if self.kind == "grey":
            return np.repeat(luma[:, None], 3, axis=1).reshape(shape)
        centres = (np.arange(LUMA_BINS, dtype=np.float32) + 0.5) * (256.0 / LUMA_BINS)
        cb = np.interp(luma, centres, self.curve[:, 0])
        cr = np.interp(luma, centres, self.curve[:, 1])
        red = luma + cr / _CR
        blue = luma + cb / _CB
        green = (luma - _LUMA[0] * red - _LUMA[2] * blue) / _LUMA[1]
        return np.stack([red, green, blue], axis=1).reshape(shape).astype(np.float32)


def _curve(luma: np.ndarray, chroma: np.ndarray) -> np.ndarray:
    """The mean chroma of each luminance bin; empty bins take their nearest filled neighbour's."""
    bins = np.clip((luma * (LUMA_BINS / 256.0)).astype(int), 0, LUMA_BINS - 1)
    counts = np.bincount(bins, minlength=LUMA_BINS).astype(np.float64)
    curve = np.zeros((LUMA_BINS, 2))
    for channel in range(2):
        curve[:, channel] = np.bincount(bins, chroma[:, channel], minlength=LUMA_BINS)
    filled = counts > 0
    curve[filled] /= counts[filled, None]
    where = np.flatnonzero(filled)
    nearest = where[np.abs(np.arange(LUMA_BINS)[:, None] - where[None, :]).argmin(axis=1)]
    return curve[nearest].astype(np.float32)


def photo_tone(rgb: np.ndarray, colour: str = "auto") -> PhotoTone:
    """The tone restored faces get in this photo (uint8 RGB): by `colour` = auto (what the photo's chroma says),
    keep (its luminance->chroma curve even for a colour photo) or restore (the model's colours)."""
    if colour == "restore":
        return PhotoTone("colour")
    luma, chroma = _luma_chroma(_sample(rgb))
    magnitude = np.hypot(chroma[:, 0], chroma[:, 1])
    if np.percentile(magnitude, 99) < GREY_CHROMA:
        return PhotoTone("grey")
    curve = _curve(luma, chroma)
    centres = (np.arange(LUMA_BINS) + 0.5) * (256.0 / LUMA_BINS)
    expected = np.stack([np.interp(luma, centres, curve[:, c]) for c in range(2)], axis=1)
    spread = np.percentile(np.hypot(*(chroma - expected).T), 95)
    if colour == "keep" or spread < TONED_SPREAD:
        return PhotoTone("toned", curve)
    return PhotoTone("colour")
