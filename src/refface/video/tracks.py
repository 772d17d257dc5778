"""Face tracks: the detections of one appearance of a face, joined across frames and smoothed over time.

Landmarks detected on every noisy frame wobble by a pixel or two, and an aligned crop that wobbles makes the
restored face swim. Because the whole track is known before anything is restored, its landmarks can be smoothed
with a zero-phase filter (Savitzky-Golay: a local quadratic fit, so smooth motion - drift, turning, zooming - is
kept without lag while the frame-to-frame noise is averaged away). Frames between detections (detection every k
frames, or a missed frame) get landmarks interpolated between their neighbours.

Detections are joined by overlap of their boxes and, when an identity model is given, by identity, with an
optimal assignment per frame; a face that is not seen for `max_gap` frames ends its track.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.signal import savgol_filter

from refface.face.alignment import FaceQuad, ffhq_quad
from refface.face.detection import DetectedFace

MIN_OVERLAP = 0.3  # intersection over union of two boxes for them to be one face in consecutive detections
_FORBIDDEN = 1e6


def box_overlap(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (left, top, right, bottom) boxes."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


@dataclass
class FaceTrack:
    """One appearance of a face: frames `first` to `last` (inclusive), landmarks on every one of them."""

    number: int
    first: int
    detected_frames: list[int] = field(default_factory=list)
    detected_landmarks: list[np.ndarray] = field(default_factory=list)
    boxes: list[tuple[float, float, float, float]] = field(default_factory=list)
    embeddings: list[np.ndarray] = field(default_factory=list)
    smoothed: np.ndarray | None = None  # [frames, 68, 2] after `finish`
    raw: np.ndarray | None = None  # [frames, 68, 2]: detections, interpolated between them

    @property
    def last(self) -> int:
        return self.detected_frames[-1]

    @property
    def length(self) -> int:
        return self.last - self.first + 1

    def covers(self, frame: int) -> bool:
        return self.first <= frame <= self.last

    def frames(self) -> range:
        return range(self.first, self.last + 1)

    def add(self, frame: int, face: DetectedFace, embedding: np.ndarray | None) -> None:
        self.detected_frames.append(frame)
        self.detected_landmarks.append(np.asarray(face.landmarks, dtype=np.float64))
        self.boxes.append(tuple(float(v) for v in face.box))
        if embedding is not None:
            self.embeddings.append(np.asarray(embedding, dtype=np.float64))

    def identity(self) -> np.ndarray | None:
        """The track's identity vector: the mean over its detections (steadier than any one noisy frame)."""
        return np.mean(self.embeddings, axis=0) if self.embeddings else None

    def finish(self, window: int) -> None:
        """Fill the frames between detections and smooth the landmarks over `window` frames (1: not at all)."""
        frames = np.arange(self.first, self.last + 1)
        known = np.asarray(self.detected_frames)
        points = np.stack(self.detected_landmarks).reshape(len(known), -1)
        filled = np.stack([np.interp(frames, known, points[:, column]) for column in range(points.shape[1])], axis=1)
        self.raw = filled.reshape(len(frames), 68, 2)
        self.smoothed = smooth_landmarks(self.raw, window)

    def quad(self, frame: int, smoothed: bool = True) -> FaceQuad:
        """The FFHQ crop square at `frame` from the smoothed (or the unsmoothed) landmarks."""
        landmarks = self.smoothed if smoothed else self.raw
        return ffhq_quad(landmarks[frame - self.first])

    def landmarks(self, frame: int) -> np.ndarray:
        return self.smoothed[frame - self.first]


def smooth_landmarks(landmarks: np.ndarray, window: int) -> np.ndarray:
    """Zero-phase Savitzky-Golay smoothing (quadratic) along time; short tracks use the longest odd window that fits."""
    count = len(landmarks)
    window = min(window, count if count % 2 else count - 1)
    if window < 3:
        return landmarks.copy()
    return savgol_filter(landmarks, window, polyorder=min(2, window - 1), axis=0, mode="interp")


class TrackBuilder:
    """Joins each frame's detections onto the open tracks; `finish` returns the tracks, smoothed.

    `identity_limit`: with embeddings, a detection farther than this from a track's identity never joins it
    (two people who pass each other keep their own tracks). `max_gap`: frames a face may go unseen (missed
    detections, or detection every k frames) before its track ends.
    """

    def __init__(self, max_gap: int = 6, identity_limit: float | None = None, distances=None) -> None:
        self.max_gap, self.identity_limit, self.distances = max_gap, identity_limit, distances
        self.tracks: list[FaceTrack] = []

    def _open(self, frame: int) -> list[FaceTrack]:
        return [track for track in self.tracks if frame - track.last <= self.max_gap]

    def add(self, frame: int, faces: Sequence[DetectedFace], embeddings: np.ndarray | None = None) -> None:
        """The detections of one frame (frames in increasing order; embeddings: one row per face, or None)."""
        open_tracks = self._open(frame)
        cost = np.full((len(open_tracks), len(faces)), _FORBIDDEN)
        for row, track in enumerate(open_tracks):
            identity = track.identity()
            for column, face in enumerate(faces):
                overlap = box_overlap(track.boxes[-1], face.box)
                if overlap < MIN_OVERLAP:
                    continue
                cost[row, column] = 1.0 - overlap
                if identity is not None and embeddings is not None and self.distances is not None:
                    distance = float(self.distances(identity[None], embeddings[column][None])[0, 0])
                    if self.identity_limit is not None and distance > self.identity_limit:
                        cost[row, column] = _FORBIDDEN
                    else:
                        cost[row, column] += distance / (self.identity_limit or 1.0)
        joined: set[int] = set()
        if open_tracks and len(faces):
            for row, column in zip(*linear_sum_assignment(cost), strict=True):
                if cost[row, column] < _FORBIDDEN:
                    open_tracks[row].add(frame, faces[column], None if embeddings is None else embeddings[column])
                    joined.add(int(column))
        for column, face in enumerate(faces):
            if column not in joined:
                track = FaceTrack(len(self.tracks), frame)
                track.add(frame, face, None if embeddings is None else embeddings[column])
                self.tracks.append(track)

    def finish(self, window: int) -> list[FaceTrack]:
        for track in self.tracks:
            track.finish(window)
        return self.tracks
