"""How a clip is tracked, restored and written: the video part of a run's settings, checked when made."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from refface.errors import RefFaceError
from refface.video.encoding import Encoding
from refface.video.media import VideoInfo


@dataclass(frozen=True)
class VideoOptions:
    """How a clip is tracked, restored and written.

    `detect_every`: run the face detector on every k-th frame (tracks fill the frames between).
    `landmark_smoothing`: seconds of the zero-phase landmark filter (0: align every frame on its own detection).
    `temporal_smoothing`: Gaussian sigma, in frames, of a blend of each restored crop with its neighbours in
    aligned space (0: none). `segment_frames`: frames per resumable segment. `frame_seeds`: every frame its own
    noise (seed + frame number) instead of the track's shared noise (for comparison only; it flickers).
    """

    encoding: Encoding = field(default_factory=Encoding)
    detect_every: int = 1
    landmark_smoothing: float = 0.35
    temporal_smoothing: float = 0.0
    segment_frames: int = 48
    frame_seeds: bool = False

    def __post_init__(self) -> None:
        if self.detect_every < 1:
            raise RefFaceError(f"--detect-every must be at least 1, got {self.detect_every}.")
        if self.landmark_smoothing < 0 or not math.isfinite(self.landmark_smoothing):
            raise RefFaceError(f"The landmark smoothing must be 0 or more seconds, got {self.landmark_smoothing}.")
        if self.temporal_smoothing < 0 or not math.isfinite(self.temporal_smoothing):
            raise RefFaceError(f"--temporal-smoothing must be 0 or more frames, got {self.temporal_smoothing}.")
        if self.segment_frames < 1:
            raise RefFaceError(f"Segments need at least one frame, got {self.segment_frames}.")

    def window(self, info: VideoInfo) -> int:
        """The landmark filter's length in frames (odd; 1 means no smoothing)."""
        frames = int(round(self.landmark_smoothing * float(info.rate)))
        return frames + 1 - frames % 2 if frames >= 3 else 1

    @property
    def reach(self) -> int:
        """How many neighbours on each side the temporal blend uses."""
        return int(math.ceil(2.0 * self.temporal_smoothing)) if self.temporal_smoothing > 0 else 0

    def recorded(self) -> dict:
        """What decides the output, as a run records it."""
        described = asdict(self)
        described["encoding"] = asdict(self.encoding)
        return described
