"""Clips whose true face motion is known: a photo moved along a smooth path, with sensor noise and JPEG damage.

Tests and the video benchmark measure crop jitter against the true motion, and flicker on a still clip, so they
need footage where the answer is known. `moving_clip` warps one photo by a similarity transform per frame
(translation, slow rotation and zoom), adds independent noise and JPEG artefacts to every frame, and writes it
with a generated sound track; `ClipMotion` keeps each frame's transform.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from refface.video.media import _import_av


@dataclass(frozen=True)
class ClipMotion:
    """The 2x3 photo -> frame transform of every frame ([frames, 2, 3])."""

    matrices: np.ndarray

    def apply(self, frame: int, points: np.ndarray) -> np.ndarray:
        """Photo coordinates -> frame coordinates at `frame`."""
        matrix = self.matrices[frame]
        return np.asarray(points, dtype=np.float64) @ matrix[:, :2].T + matrix[:, 2]


def smooth_path(
    frames: int, size: tuple[int, int], photo_size: int, shift: float = 0.12, turn: float = 6.0, zoom: float = 0.08,
    still: bool = False,
) -> ClipMotion:  # fmt: skip
    """A slow, smooth motion: the photo centred and scaled to the frame, then drifting by up to `shift` of the
    frame, turning up to `turn` degrees and zooming by up to `zoom` (nothing moves with `still`)."""
    width, height = size
    base = 0.8 * min(width, height) / photo_size
    matrices = []
    for t in np.linspace(0.0, 1.0, frames) if frames > 1 else [0.0]:
        phase = 0.0 if still else t
        angle = turn * np.sin(2 * np.pi * phase)
        scale = base * (1.0 + zoom * np.sin(np.pi * phase))
        centre = (
            width / 2 + shift * width * np.sin(2 * np.pi * phase * 0.75),
            height / 2 + shift * height * (np.cos(2 * np.pi * phase * 0.5) - 1.0) * 0.5,
        )
        matrix = cv2.getRotationMatrix2D((photo_size / 2 - 0.5, photo_size / 2 - 0.5), angle, scale)
        matrix[:, 2] += np.asarray(centre) - (photo_size / 2 - 0.5)
        matrices.append(matrix)
    return ClipMotion(np.stack(matrices))


def render_frames(
    photo: np.ndarray, motion: ClipMotion, size: tuple[int, int], noise: float = 6.0, jpeg_quality: int = 60,
    seed: int = 0,
) -> list[np.ndarray]:  # fmt: skip
    """Every frame: the photo under its transform, with independent Gaussian noise and a JPEG round trip."""
    rng = np.random.default_rng(seed)
    frames = []
    for matrix in motion.matrices:
        frame = cv2.warpAffine(photo, matrix, size, flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT_101)
        noisy = np.clip(frame.astype(np.float32) + rng.normal(0.0, noise, frame.shape), 0, 255).astype(np.uint8)
        if jpeg_quality < 100:
            ok, data = cv2.imencode(".jpg", noisy[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
            noisy = cv2.imdecode(data, cv2.IMREAD_COLOR)[..., ::-1]
        frames.append(np.ascontiguousarray(noisy))
    return frames


def tone(seconds: float, sample_rate: int = 16000) -> np.ndarray:
    """A float32 [1, samples] sound: two tones and a little noise, so any change to it shows."""
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    rng = np.random.default_rng(1)
    wave = 0.25 * np.sin(2 * np.pi * 440 * t) + 0.1 * np.sin(2 * np.pi * 1250 * t) + 0.02 * rng.standard_normal(len(t))
    return wave.astype(np.float32)[None]


def write_clip(
    frames: list[np.ndarray], path: str | Path, fps: int = 24, sound: np.ndarray | None = None,
    sample_rate: int = 16000, codec: str = "libx264", crf: int = 12, rotation: int = 0,
    timestamps: list[int] | None = None,
) -> Path:  # fmt: skip
    """Write RGB frames (and a mono sound track) as a clip; `timestamps` in 1/fps units give a variable rate."""
    av = _import_av()
    path = Path(path)
    height, width = frames[0].shape[:2]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
        if codec == "ffv1":
            stream.pix_fmt = "bgr0"  # exact RGB
        if codec == "libx264":
            stream.options = {"crf": str(crf)}
        stream.codec_context.time_base = Fraction(1, fps)
        if rotation:
            stream.set_display_rotation(rotation)
        audio = None
        if sound is not None:
            audio = container.add_stream("aac", rate=sample_rate)
            audio.layout = "mono"
        for number, pixels in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts = timestamps[number] if timestamps is not None else number
            frame.time_base = Fraction(1, fps)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        if audio is not None:
            chunk = 1024
            for start in range(0, sound.shape[1], chunk):
                samples = np.ascontiguousarray(sound[:, start : start + chunk])
                piece = av.AudioFrame.from_ndarray(samples, "fltp", "mono")
                piece.sample_rate, piece.pts = sample_rate, start
                for packet in audio.encode(piece):
                    container.mux(packet)
            for packet in audio.encode():
                container.mux(packet)
    return path


def decoded_sound(path: str | Path) -> np.ndarray:
    """Every audio sample of the clip's first sound stream, decoded ([channels, samples])."""
    av = _import_av()
    with av.open(str(path)) as container:
        return np.concatenate([frame.to_ndarray() for frame in container.decode(audio=0)], axis=1)


def decoded_frames(path: str | Path) -> list[np.ndarray]:
    """Every frame of the clip as RGB (as stored, no rotation): for checks, small clips only."""
    av = _import_av()
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
