"""Writing the restored clip: segment files while restoring, then one atomic remux with the source's sound.

Frames are encoded into short segment files, each renamed into place only when complete, so an interrupted run
resumes at the first missing segment. A segment holds the encoder's packets with their exact timestamps (no
container rounds them). `assemble` opens an encoder with the same settings for the final container, checks that
its stream header equals the segments' (so the packets decode as encoded), then writes every segment's packets
and the source's audio packets, untouched, and renames the file into place: the user never sees half a video,
and the sound is the original bit for bit.

H.264 needs even sizes in yuv420p; a clip of odd size (639x479) keeps its size in yuv444p instead. The lossless
setting stores the RGB frames exactly (FFV1, in Matroska).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from refface.errors import RefFaceError, short_reason
from refface.files import atomic_output
from refface.video.media import VideoInfo, _import_av, ffmpeg_reason, stored

SEGMENT_SUFFIX = ".npz"
CONTAINERS = (".mp4", ".mkv")  # what restored clips are written as (see `Encoding.container_suffix`)
# Audio codecs the MP4 muxer takes as they are; anything else goes into Matroska, which takes every codec.
MP4_AUDIO = frozenset({"aac", "mp3", "ac3", "eac3", "opus", "alac", "flac"})


@dataclass(frozen=True)
class Encoding:
    """How the restored frames are compressed: H.264 at `crf` (18: visually lossless), or lossless FFV1."""

    crf: int = 18
    lossless: bool = False
    preset: str = "medium"

    def __post_init__(self) -> None:
        if not 0 <= self.crf <= 51:
            raise RefFaceError(f"--crf must be between 0 and 51 (18 is visually lossless), got {self.crf}.")

    def container_suffix(self, info: VideoInfo) -> str:
        """.mkv for lossless output or sound MP4 cannot hold; .mp4 otherwise."""
        mp4, mkv = CONTAINERS
        return mkv if self.lossless or any(codec not in MP4_AUDIO for codec in info.audio_codecs) else mp4

    def pixel_format(self, info: VideoInfo) -> str:
        if self.lossless:
            return "bgr0"  # FFV1's RGB: exact for 8-bit RGB frames
        return "yuv420p" if info.width % 2 == 0 and info.height % 2 == 0 else "yuv444p"

    def configure(self, context, info: VideoInfo) -> None:
        """Set up an encoder: the same calls for the segments and for the final stream, so their headers agree."""
        context.width, context.height = info.width, info.height
        context.pix_fmt = self.pixel_format(info)
        context.time_base = info.time_base
        context.framerate = info.rate
        if self.lossless:
            context.options = {"level": "3", "slicecrc": "1", "threads": "1"}
        else:
            context.options = {"crf": str(self.crf), "preset": self.preset}

    @property
    def codec(self) -> str:
        return "ffv1" if self.lossless else "libx264"

    def notes(self, info: VideoInfo) -> list[str]:
        """What the user should know about how this clip is written."""
        notes = []
        if not self.lossless and self.pixel_format(info) == "yuv444p":
            notes.append(
                f"{info.path.name} is {info.width}x{info.height}; H.264 in yuv420p needs even sizes, so it is written "
                "in yuv444p at its own size (some players cannot show 4:4:4; --lossless writes FFV1 instead)."
            )
        if not self.lossless and self.container_suffix(info) == ".mkv":
            notes.append(
                f"{info.path.name} has sound ({', '.join(info.audio_codecs)}) that MP4 cannot hold unchanged; it is "
                "written as .mkv."
            )
        return notes


class SegmentWriter:
    """Encodes upright RGB frames, with their source timestamps, into one segment file that appears when closed."""

    def __init__(self, target: Path, info: VideoInfo, encoding: Encoding) -> None:
        av = _import_av()
        self.target, self.info = Path(target), info
        self.context = av.CodecContext.create(encoding.codec, "w")
        encoding.configure(self.context, info)
        self.context.flags |= av.codec.context.Flags.global_header  # the stream header goes to the container
        self.packets: list[tuple[bytes, int, int, bool]] = []
        self.frames = 0

    def write(self, pixels: np.ndarray, pts: int) -> None:
        av = _import_av()
        frame = av.VideoFrame.from_ndarray(stored(pixels, self.info.rotation), format="rgb24")
        frame.pts, frame.time_base = pts, self.info.time_base
        self._keep(self.context.encode(frame))
        self.frames += 1

    def _keep(self, packets) -> None:
        self.packets.extend((bytes(p), int(p.pts), int(p.dts), bool(p.is_keyframe)) for p in packets)

    def close(self) -> Path:
        """Flush the encoder and write the finished segment into place."""
        self._keep(self.context.encode(None))
        data = [packet[0] for packet in self.packets]
        with atomic_output(self.target) as stream:
            np.savez(
                stream,
                data=np.frombuffer(b"".join(data), dtype=np.uint8),
                sizes=np.array([len(d) for d in data], dtype=np.int64),
                pts=np.array([p[1] for p in self.packets], dtype=np.int64),
                dts=np.array([p[2] for p in self.packets], dtype=np.int64),
                keyframe=np.array([p[3] for p in self.packets], dtype=bool),
                header=np.frombuffer(bytes(self.context.extradata or b""), dtype=np.uint8),
                frames=np.array(self.frames),
            )
        return self.target


@dataclass
class Segment:
    """A finished segment read back: its packets (bytes, pts, dts, keyframe) and the stream header it needs."""

    header: bytes
    frames: int
    packets: list[tuple[bytes, int, int, bool]]


def read_segment(path: Path) -> Segment:
    try:
        with np.load(path) as stored_arrays:
            data, sizes = stored_arrays["data"].tobytes(), stored_arrays["sizes"]
            ends = np.cumsum(sizes)
            packets = [
                (data[end - size : end], int(pts), int(dts), bool(key))
                for size, end, pts, dts, key in zip(
                    sizes, ends, stored_arrays["pts"], stored_arrays["dts"], stored_arrays["keyframe"], strict=True
                )
            ]
            return Segment(stored_arrays["header"].tobytes(), int(stored_arrays["frames"]), packets)
    except (OSError, ValueError, KeyError) as error:
        raise RefFaceError(
            f"The unfinished run's segment {path} is unreadable ({short_reason(error)}); pass --overwrite to "
            "start the clip again."
        ) from None


def _audio_packets(container) -> Iterator:
    for packet in container.demux(list(container.streams.audio)):
        if packet.dts is not None and packet.size > 0:
            yield packet


def assemble(segments: Sequence[Path], info: VideoInfo, encoding: Encoding, target: Path) -> Path:
    """Write the segments' video and the source's audio, packets unchanged, into `target` (replaced atomically)."""
    av = _import_av()
    target = Path(target)
    with atomic_output(target) as stream, av.open(str(info.path)) as source:
        try:
            output = av.open(
                stream,
                "w",
                format="mp4" if target.suffix == ".mp4" else "matroska",
                options={"fflags": "+bitexact"},  # no random ids or dates: a resumed run gives the same file
            )
            video = output.add_stream(encoding.codec, rate=info.rate)
            encoding.configure(video.codec_context, info)
            video.time_base = info.time_base
            if info.rotation:
                video.set_display_rotation(info.rotation)
            audio = {s.index: output.add_stream_from_template(s) for s in source.streams.audio}
            output.start_encoding()
            _interleave(output, video, segments, _audio_packets(source) if audio else iter(()), audio, info)
            output.close()
        except av.FFmpegError as error:
            raise RefFaceError(f"Could not write {target} ({ffmpeg_reason(error)}).") from None
    return target


def _video_packets(segments: Sequence[Path], video, info: VideoInfo) -> Iterator:
    av = _import_av()
    header = bytes(video.codec_context.extradata or b"")
    for path in segments:
        segment = read_segment(path)
        if segment.header != header:
            raise RefFaceError(
                f"The segment {path} was encoded with other settings than this run; pass --overwrite to start the "
                "clip again."
            )
        for data, pts, dts, key in segment.packets:
            packet = av.Packet(data)
            packet.pts, packet.dts, packet.time_base, packet.is_keyframe = pts, dts, info.time_base, key
            yield packet


def _seconds(packet) -> float:
    return float(packet.dts * packet.time_base)


def _interleave(output, video, segments: Sequence[Path], sound: Iterator, audio: dict, info: VideoInfo) -> None:
    """Write video and audio packets in time order (players and streaming need them interleaved)."""
    pictures = _video_packets(segments, video, info)
    pending_video, pending_sound = next(pictures, None), next(sound, None)
    while pending_video is not None or pending_sound is not None:
        take_video = pending_sound is None or (
            pending_video is not None and _seconds(pending_video) <= _seconds(pending_sound)
        )
        if take_video:
            pending_video.stream = video
            output.mux(pending_video)
            pending_video = next(pictures, None)
        else:
            pending_sound.stream = audio[pending_sound.stream.index]
            output.mux(pending_sound)
            pending_sound = next(sound, None)
