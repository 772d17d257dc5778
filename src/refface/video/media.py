"""Reading video files with PyAV (its wheels carry FFmpeg; no system ffmpeg): what a clip is, and its frames.

`probe_video` reads only the container and the packets (no decoding) to learn the frame count, the time base,
whether the frame rate varies and what audio there is, and turns every way a file can fail to be a usable video
into one sentence. `decode_frames` streams upright RGB frames with their own timestamps, so memory does not grow
with the clip and a variable-rate clip keeps its timing.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from refface.errors import RefFaceError, short_reason

VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v"})
# Timestamps further apart than this (relative to the typical step) mark a variable frame rate.
VARIABLE_RATE_TOLERANCE = 0.02


def is_video(path: str | Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def _import_av():
    try:
        import av
    except ImportError:
        raise RefFaceError("Video support needs PyAV; run `pip install av`.") from None
    return av


@dataclass(frozen=True)
class VideoInfo:
    """What the restoration and the encoder need to know of a clip; sizes are the stored (coded) ones."""

    path: Path
    width: int
    height: int
    rotation: int  # display rotation in degrees, counterclockwise (phone videos shot upright: 90 or -90)
    frames: int
    time_base: Fraction
    rate: Fraction  # the average frame rate
    duration: float  # seconds, from the first frame's start to the last frame's end
    variable_rate: bool
    audio_codecs: tuple[str, ...]
    pixel_format: str

    @property
    def upright_size(self) -> tuple[int, int]:
        """(width, height) as the clip is shown."""
        return (self.height, self.width) if self.rotation % 180 else (self.width, self.height)


def ffmpeg_reason(error: Exception) -> str:
    """FFmpeg's own words for an error, without the file name PyAV appends (the sentence names the file)."""
    reason = getattr(error, "strerror", None)
    return str(reason).rstrip(".") if reason else short_reason(error)


def _damaged(path: Path, error: Exception) -> RefFaceError:
    return RefFaceError(f"{path} is not a readable video; it may be damaged or truncated ({ffmpeg_reason(error)}).")


def probe_video(path: str | Path) -> VideoInfo:
    """The clip's facts, or one sentence saying why `path` is not a video refface can restore."""
    av = _import_av()
    path = Path(path)
    if not path.is_file():
        raise RefFaceError(f"The video {path} does not exist.")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                if container.streams.audio:
                    raise RefFaceError(f"{path} holds only sound; there is no picture to restore.")
                raise RefFaceError(f"{path} holds no video stream.")
            stream = container.streams.video[0]
            audio = tuple(s.codec_context.name for s in container.streams.audio)
            timestamps = [
                packet.pts for packet in container.demux(stream) if packet.pts is not None and packet.size > 0
            ]
            rotation, pixel_format = _first_frame_facts(container, path)
            width, height = stream.codec_context.width, stream.codec_context.height
            time_base, rate = stream.time_base, stream.average_rate or stream.guessed_rate
    except RefFaceError:
        raise
    except (av.FFmpegError, OSError, ValueError) as error:
        raise _damaged(path, error) from None
    if not timestamps or not width or not height:
        raise RefFaceError(f"{path} has a video stream without any frame.")
    timestamps.sort()
    steps = np.diff(np.asarray(timestamps, dtype=np.float64))
    step = float(np.median(steps)) if len(steps) else (1.0 / float(rate) / float(time_base) if rate else 1.0)
    slack = max(VARIABLE_RATE_TOLERANCE * step, 1.5)  # a tick of rounding (Matroska keeps milliseconds) is not a change
    variable = bool(len(steps)) and bool(np.any(np.abs(steps - step) > slack))
    if not rate:
        rate = Fraction(1, 1) / (time_base * Fraction(step).limit_denominator(1 << 20))
    duration = float((timestamps[-1] - timestamps[0] + step) * time_base)
    return VideoInfo(
        path, width, height, rotation, len(timestamps), time_base, Fraction(rate), duration, variable, audio,
        pixel_format,
    )  # fmt: skip


def _first_frame_facts(container, path: Path) -> tuple[int, str]:
    """The display rotation and pixel format, from the first decodable frame."""
    container.seek(0)
    for frame in container.decode(video=0):
        return int(round((frame.rotation or 0) / 90.0)) * 90 % 360, frame.format.name
    raise RefFaceError(f"{path} has a video stream, but none of its frames can be decoded.")


@dataclass
class Frame:
    """One decoded frame: its number in the clip, its timestamp (in the stream's time base) and upright RGB pixels."""

    index: int
    pts: int
    pixels: np.ndarray  # uint8 [H, W, 3], as shown (rotation applied)


def upright(pixels: np.ndarray, rotation: int) -> np.ndarray:
    """The frame as it is shown: the stored frame turned `rotation` degrees counterclockwise."""
    turns = (rotation // 90) % 4
    return np.ascontiguousarray(np.rot90(pixels, turns)) if turns else pixels


def stored(pixels: np.ndarray, rotation: int) -> np.ndarray:
    """The inverse of `upright`: back to the orientation the file stores."""
    turns = (rotation // 90) % 4
    return np.ascontiguousarray(np.rot90(pixels, -turns)) if turns else pixels


def decode_frames(info: VideoInfo, start: int = 0) -> Iterator[Frame]:
    """Upright RGB frames from number `start` on, in presentation order, one at a time."""
    av = _import_av()
    index = 0
    try:
        with av.open(str(info.path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                if index >= start:
                    pts = frame.pts if frame.pts is not None else index
                    yield Frame(index, int(pts), upright(frame.to_ndarray(format="rgb24"), info.rotation))
                index += 1
    except av.FFmpegError as error:
        raise RefFaceError(
            f"{info.path} is damaged after frame {index} ({ffmpeg_reason(error)}); nothing was written for it."
        ) from None
    if index < info.frames:
        raise RefFaceError(f"{info.path} ended after {index} of its {info.frames} frames; it is probably truncated.")
