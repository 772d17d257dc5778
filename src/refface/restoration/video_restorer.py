"""Video through the photo workflow: face tracks, each matched to a person once, restored frame by frame.

A clip is read twice, streamed both times. The first pass finds the faces (every frame, or every k frames),
joins them into tracks and smooths each track's landmarks, so the aligned crop follows the face without the
frame-to-frame wobble of fresh detections; it also decides each track's person once, from the track's mean
identity. The second pass aligns every frame's faces with the smoothed tracks and restores them through the
`PhotoRestorer` (the person's references encoded once for the whole clip), every frame of a track from the same
noise, optionally blends each restored crop with its neighbours in time (in aligned space), pastes the faces
back and encodes the frames into segment files. An interrupted run resumes at the first missing segment and
gives the same file as an uninterrupted one: faces are restored in fixed groups (frame number // batch size),
so a frame's result never depends on where a run started.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from refface.errors import RefFaceError
from refface.face.alignment import MIN_FACE_SIZE, AlignedFace, FaceQuad, ffhq_quad, quad_matrix, warp_quad
from refface.face.locate import detect_faces
from refface.face.paste import paste_face
from refface.files import atomic_output
from refface.restoration.people import Match
from refface.restoration.photo_restorer import SKIPPED, FaceResult, PhotoRestorer
from refface.video.encoding import SEGMENT_SUFFIX, Encoding, SegmentWriter, assemble
from refface.video.media import Frame, VideoInfo, decode_frames, probe_video
from refface.video.tracks import FaceTrack, TrackBuilder

EMBED_SIZE = 256  # aligned crop size for identity vectors while tracking (the embedders work below it)
TRACKS_FILE = "tracks.npz"
SETTINGS_FILE = "settings.json"


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

    def settings(self) -> dict:
        """What decides the output, as a run records it."""
        described = asdict(self)
        described["encoding"] = asdict(self.encoding)
        return described


@dataclass
class TrackResult:
    """One face track: its frames and the face that stands for it (middle frame) with person and status."""

    track: FaceTrack
    face: FaceResult

    @property
    def frames(self) -> str:
        return f"frames {self.track.first}-{self.track.last}"


@dataclass
class VideoResult:
    """What happened to a clip: where it was written, its tracks, and what the user should know."""

    source: str
    output: Path | None
    tracks: list[TrackResult]
    frames: int
    notes: list[str] = field(default_factory=list)
    resumed_frames: int = 0
    seconds: float = 0.0


def aligned_from_quad(pixels: np.ndarray, quad: FaceQuad, size: int) -> AlignedFace:
    return AlignedFace(warp_quad(pixels, quad, size), quad_matrix(quad, size), quad, None, pixels.shape[:2])


class VideoRestorer:
    """Restores the faces of video clips through a `PhotoRestorer` (its people, references, pipeline, seed)."""

    def __init__(self, restorer: PhotoRestorer, options: VideoOptions | None = None, *, progress: bool = False) -> None:
        if restorer.detector is None:
            raise RefFaceError("Videos need a face detector; pass one to the PhotoRestorer.")
        self.restorer = restorer
        self.options = options or VideoOptions()
        self.progress = progress

    # ------------------------------------------------------------------------------ pass 1: tracks
    def find_tracks(self, info: VideoInfo) -> list[FaceTrack]:
        """Every appearance of a face in the clip, its landmarks smoothed (one decoding pass)."""
        people = self.restorer.people
        embedder = people.embedder if len(people) else None
        builder = TrackBuilder(
            max_gap=2 * self.options.detect_every + 2,
            identity_limit=1.5 * people.threshold if embedder is not None else None,
            distances=embedder.distances if embedder is not None else None,
        )
        bar = tqdm(total=info.frames, desc="finding faces", unit="frame", disable=not self.progress)
        for frame in decode_frames(info):
            if frame.index % self.options.detect_every == 0 or frame.index == info.frames - 1:
                faces = [f for f in detect_faces(frame.pixels, self.restorer.detector) if _usable(f)]
                if self.restorer.select == "largest":
                    faces = faces[:1]
                vectors = None
                if embedder is not None and faces:
                    crops = [warp_quad(frame.pixels, ffhq_quad(f.landmarks), EMBED_SIZE, pad=False) for f in faces]
                    vectors = embedder.embed(crops)
                builder.add(frame.index, faces, vectors)
            bar.update(1)
        bar.close()
        return builder.finish(self.options.window(info))

    def plan_tracks(self, info: VideoInfo, tracks: list[FaceTrack], source: str) -> list[TrackResult]:
        """Each track's person (tracks seen together get different people) and its representative face."""
        select = self.restorer.select
        if isinstance(select, int) and not 0 <= select < len(tracks):
            raise RefFaceError(
                f"{source} has {len(tracks)} face track(s) (numbered 0 to {len(tracks) - 1}); track {select} does "
                "not exist."
            )
        chosen = [t for t in tracks if not isinstance(select, int) or t.number == select]
        matches: dict[int, Match] = {}
        for group in _seen_together(chosen):
            vectors = [t.identity() for t in group]
            if all(v is not None for v in vectors):
                found = self.restorer.match_vectors(np.stack(vectors))
            else:
                found = [Match(None, None) for _ in group]
            matches.update({t.number: m for t, m in zip(group, found, strict=True)})
        crops: dict[int, AlignedFace] = {}
        if chosen:
            for frame in decode_frames(info, start=min(_middle(t) for t in chosen)):
                for track in [t for t in chosen if _middle(t) == frame.index]:
                    crops[track.number] = aligned_from_quad(
                        frame.pixels, track.quad(frame.index), self.restorer.aligned_size
                    )
                if len(crops) == len(chosen):
                    break
        results = []
        for track in chosen:
            aligned = crops[track.number]
            face = self.restorer.planned(track.number, aligned.image, aligned, matches[track.number], source)
            results.append(TrackResult(track, face))
        return results

    # ------------------------------------------------------------------------------ pass 2: restore
    def output_path(self, info: VideoInfo, target: str | Path) -> Path:
        """Where `restore` writes: `target` with the suffix of the container the output needs."""
        return Path(target).with_suffix(self.options.encoding.container_suffix(info))

    def restore(
        self,
        path: str | Path,
        target: str | Path,
        work: str | Path | None = None,
        on_track: Callable[[TrackResult], None] | None = None,
    ) -> VideoResult:
        """Restore the clip at `path` into `target`, whose suffix is set to fit: .mp4 (H.264), .mkv (lossless, or
        sound MP4 cannot hold) or, for a clip with no face to restore, copied unchanged, the input's own.
        `work`: the folder of the resumable state (default: beside the output); removed when the clip is done.
        `on_track(result)` hears each track's representative face as soon as it is restored (an archive run writes
        its crops then, so they survive an interruption)."""
        started = time.perf_counter()
        info = probe_video(path)
        target = self.output_path(info, target)
        work = Path(work) if work is not None else target.with_name(f".{target.stem}.work")
        source = str(path)
        notes = self.describe(info)
        tracks = self._tracks(info, work)
        results = self.plan_tracks(info, tracks, source)
        restored = [r for r in results if r.face.status != SKIPPED]
        if not restored:
            notes.append(
                f"No face to restore was found in {source}; the clip is copied unchanged."
                if not results
                else f"None of the faces in {source} is restored (--unknown skip); the clip is copied unchanged."
            )
            target = target.with_suffix(info.path.suffix.lower())
            target.parent.mkdir(parents=True, exist_ok=True)
            with atomic_output(target) as stream, open(info.path, "rb") as original:
                shutil.copyfileobj(original, stream)
            shutil.rmtree(work, ignore_errors=True)
            return VideoResult(source, target, results, info.frames, notes, 0, time.perf_counter() - started)
        target.parent.mkdir(parents=True, exist_ok=True)
        resumed = self._encode(info, results, work, on_track)
        assemble(self._segments(work, info), info, self.options.encoding, target)
        shutil.rmtree(work, ignore_errors=True)
        if resumed:
            notes.append(f"{source}: resumed after {resumed} frame(s) restored by an earlier run.")
        return VideoResult(source, target, results, info.frames, notes, resumed, time.perf_counter() - started)

    def describe(self, info: VideoInfo) -> list[str]:
        """Notes on the clip itself (before any work)."""
        notes = list(self.options.encoding.notes(info))
        if info.variable_rate:
            notes.append(
                f"{info.path.name} has a variable frame rate; every frame keeps its own timestamp in the output."
            )
        if info.frames == 1:
            notes.append(f"{info.path.name} has a single frame; it is restored like a photo and written as a clip.")
        return notes

    def _settings(self, info: VideoInfo) -> dict:
        return {
            "clip": [info.frames, info.width, info.height, str(info.time_base)],
            "video": self.options.settings(),
            "seed": self.restorer.seed,
            "batch_size": self.restorer.batch_size,
            "options": json.loads(json.dumps(self.restorer.options, default=str)),
            "people": [[p.name, p.reference_names] for p in self.restorer.people],
            "select": self.restorer.select,
            "unknown": self.restorer.unknown,
        }

    def _tracks(self, info: VideoInfo, work: Path) -> list[FaceTrack]:
        """The clip's tracks: found now, or read back from an unfinished run with the same settings."""
        settings = json.dumps(self._settings(info), sort_keys=True)
        record = work / SETTINGS_FILE
        if record.is_file() and record.read_text(encoding="utf-8") == settings and (work / TRACKS_FILE).is_file():
            try:
                return load_tracks(work / TRACKS_FILE, self.options.window(info))
            except (OSError, ValueError, KeyError):
                pass  # unreadable: start the clip again
        shutil.rmtree(work, ignore_errors=True)
        tracks = self.find_tracks(info)
        work.mkdir(parents=True, exist_ok=True)
        save_tracks(work / TRACKS_FILE, tracks)
        with atomic_output(record, "w", encoding="utf-8") as stream:
            stream.write(settings)
        return tracks

    def _segments(self, work: Path, info: VideoInfo) -> list[Path]:
        count = math.ceil(info.frames / self.options.segment_frames)
        return [work / f"segment-{number:05d}{SEGMENT_SUFFIX}" for number in range(count)]

    def _encode(self, info: VideoInfo, results: list[TrackResult], work: Path, on_track=None) -> int:
        """Restore and encode every frame into the missing segments; returns the frames done before."""
        segments = self._segments(work, info)
        first_missing = next((n for n, path in enumerate(segments) if not path.is_file()), len(segments))
        begin = first_missing * self.options.segment_frames
        if begin >= info.frames:
            return info.frames
        batch, reach = self.restorer.batch_size, self.options.reach
        start = max(0, (begin - reach) // batch * batch)  # whole restoration groups from here on
        live = [r for r in results if r.face.status != SKIPPED]
        crops: dict[tuple[int, int], np.ndarray] = {}
        aligned: dict[tuple[int, int], AlignedFace] = {}
        pending: dict[tuple[int, int], list[tuple[int, FaceResult]]] = {}
        waiting: deque[Frame] = deque()
        writer: SegmentWriter | None = None
        bar = tqdm(total=info.frames, initial=begin, desc="restoring frames", unit="frame", disable=not self.progress)
        representative = {r.track.number: _middle(r.track) for r in live}

        def restore_group(result: TrackResult, group: int) -> None:
            faces = pending.pop((result.track.number, group))
            planned = [
                FaceResult(
                    result.track.number,
                    face.crop,
                    face.aligned,
                    result.face.person,
                    result.face.distance,
                    result.face.status,
                    seed=self.restorer.seed + index if self.options.frame_seeds else None,
                )  # fmt: skip
                for index, face in faces
            ]
            self.restorer.restore_faces(planned)
            for (index, _), face in zip(faces, planned, strict=True):
                crops[(result.track.number, index)] = face.restored
                if representative[result.track.number] == index:
                    result.face.restored = face.restored
                    if on_track is not None:
                        on_track(result)

        def ready(frame: Frame) -> bool:
            if frame.index < begin:  # restored only for later frames to blend with
                return True
            for result in live:
                track = result.track
                if track.covers(frame.index):
                    needed = min(track.last, frame.index + reach)
                    if (track.number, needed) not in crops:
                        return False
            return True

        def finish(frame: Frame) -> None:
            nonlocal writer
            pixels = frame.pixels
            for result in live:
                number = result.track.number
                if result.track.covers(frame.index):
                    where = aligned.pop((number, frame.index))
                    if frame.index >= begin:
                        pixels = paste_face(pixels, self._blended(crops, result.track, frame.index), where)
            if frame.index >= begin:
                segment = frame.index // self.options.segment_frames
                if writer is None:
                    writer = SegmentWriter(segments[segment], info, self.options.encoding)
                writer.write(pixels, frame.pts)
                if frame.index == min(info.frames, (segment + 1) * self.options.segment_frames) - 1:
                    writer.close()
                    writer = None
                bar.update(1)
            for result in live:  # crops no later frame blends with
                crops.pop((result.track.number, frame.index - reach), None)

        for frame in decode_frames(info, start=start):
            for result in live:
                track = result.track
                if not track.covers(frame.index):
                    continue
                face = aligned_from_quad(frame.pixels, track.quad(frame.index), self.restorer.aligned_size)
                aligned[(track.number, frame.index)] = face
                group = frame.index // batch
                pending.setdefault((track.number, group), []).append(
                    (frame.index, FaceResult(track.number, face.image, face, None, None, ""))
                )
                if frame.index == min(track.last, (group + 1) * batch - 1):
                    restore_group(result, group)
            waiting.append(frame)
            while waiting and ready(waiting[0]):
                finish(waiting.popleft())
        while waiting:
            finish(waiting.popleft())
        bar.close()
        return begin

    def _blended(self, crops: dict, track: FaceTrack, index: int) -> np.ndarray:
        """The restored crop at `index`, blended with its track neighbours by a Gaussian in time (zero-phase)."""
        reach = self.options.reach
        if reach == 0:
            return crops[(track.number, index)]
        sigma = self.options.temporal_smoothing
        total, weights = 0.0, 0.0
        for other in range(max(track.first, index - reach), min(track.last, index + reach) + 1):
            weight = math.exp(-0.5 * ((other - index) / sigma) ** 2)
            total = total + weight * crops[(track.number, other)].astype(np.float32)
            weights += weight
        return np.clip(np.rint(total / weights), 0, 255).astype(np.uint8)


def _middle(track: FaceTrack) -> int:
    """The frame whose face stands for the track in the report."""
    return track.first + track.length // 2


def _usable(face) -> bool:
    return ffhq_quad(face.landmarks).size >= MIN_FACE_SIZE


def _seen_together(tracks: list[FaceTrack]) -> list[list[FaceTrack]]:
    """Tracks grouped so that any two overlapping in time share a group (they show different people)."""
    groups: list[list[FaceTrack]] = []
    for track in sorted(tracks, key=lambda t: t.first):
        joined = [g for g in groups if any(t.first <= track.last and track.first <= t.last for t in g)]
        merged = [track] + [t for g in joined for t in g]
        groups = [g for g in groups if g not in joined] + [merged]
    return groups


def save_tracks(path: Path, tracks: list[FaceTrack]) -> None:
    """The detections of every track, so a resumed run restores exactly the same crops."""
    arrays: dict[str, np.ndarray] = {"count": np.array(len(tracks))}
    for track in tracks:
        arrays[f"{track.number}_frames"] = np.asarray(track.detected_frames, dtype=np.int64)
        arrays[f"{track.number}_landmarks"] = np.stack(track.detected_landmarks)
        arrays[f"{track.number}_boxes"] = np.asarray(track.boxes, dtype=np.float64)
        if track.embeddings:
            arrays[f"{track.number}_embeddings"] = np.stack(track.embeddings)
    with atomic_output(path) as stream:
        np.savez(stream, **arrays)


def load_tracks(path: Path, window: int) -> list[FaceTrack]:
    tracks = []
    with np.load(path) as stored:
        for number in range(int(stored["count"])):
            frames = stored[f"{number}_frames"]
            track = FaceTrack(number, int(frames[0]))
            track.detected_frames = [int(f) for f in frames]
            track.detected_landmarks = list(stored[f"{number}_landmarks"])
            track.boxes = [tuple(box) for box in stored[f"{number}_boxes"]]
            if f"{number}_embeddings" in stored:
                track.embeddings = list(stored[f"{number}_embeddings"])
            track.finish(window)
            tracks.append(track)
    return tracks
