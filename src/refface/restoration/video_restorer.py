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
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from refface.errors import RefFaceError
from refface.face.alignment import AlignedFace, big_enough, ffhq_quad, quad_matrix, warp_quad
from refface.face.detection import DetectedFace
from refface.face.locate import detect_faces_many
from refface.files import atomic_output
from refface.photo.original import OriginalPhoto
from refface.photo.tone import PhotoTone, photo_tone
from refface.restoration.compose import choose_scale, compose
from refface.restoration.people import Match
from refface.restoration.photo_restorer import SKIPPED, FaceResult, PhotoRestorer
from refface.video.encoding import SEGMENT_SUFFIX, SegmentWriter, assemble
from refface.video.media import Frame, VideoInfo, decode_frames, probe_video
from refface.video.options import VideoOptions
from refface.video.tracks import FaceTrack, TrackBuilder

DETECT_BATCH = 8  # video frames searched together (RetinaFace runs them as one batch)
EMBED_SIZE = 256  # aligned crop size for identity vectors while tracking (the embedders work below it)
MAX_VIDEO_SIDE = 8192  # the largest frame side refface encodes (H.264's levels stop near it)
TRACKS_FILE = "tracks.npz"
SETTINGS_FILE = "settings.json"


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


def aligned_from_track(pixels: np.ndarray, track: FaceTrack, frame: int, size: int) -> AlignedFace:
    """A tracked face aligned from its smoothed landmarks, which it keeps (the paste's face mask follows them)."""
    landmarks = track.landmarks(frame)
    left, top = landmarks.min(axis=0)
    right, bottom = landmarks.max(axis=0)
    face = DetectedFace((float(left), float(top), float(right), float(bottom)), 1.0, landmarks)
    quad = ffhq_quad(landmarks)
    return AlignedFace(warp_quad(pixels, quad, size), quad_matrix(quad, size), quad, face, pixels.shape[:2])


def scaled_info(info: VideoInfo, scale: float) -> VideoInfo:
    """The output stream of a clip enlarged `scale` times: even sides where the clip's are even (yuv420p)."""
    if scale == 1.0:
        return info

    def side(value: int) -> int:
        size = round(value * scale)
        return size + size % 2 if value % 2 == 0 else size

    return replace(info, width=side(info.width), height=side(info.height))


class VideoRestorer:
    """Restores the faces of video clips through a `PhotoRestorer` (its people, references, pipeline, settings).

    `options`: how clips are tracked and written (default: the restorer's settings' `video`).
    """

    def __init__(self, restorer: PhotoRestorer, options: VideoOptions | None = None, *, progress: bool = False) -> None:
        if restorer.detector is None:
            raise RefFaceError("Videos need a face detector; pass one to the PhotoRestorer.")
        self.restorer = restorer
        self.options = options if options is not None else restorer.settings.video
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
        waiting: list[Frame] = []  # frames to search, a batch at a time (one network call on a GPU)
        for frame in decode_frames(info):
            if frame.index % self.options.detect_every == 0 or frame.index == info.frames - 1:
                waiting.append(frame)
            else:
                bar.update(1)
            if len(waiting) == DETECT_BATCH:
                self._add_faces(builder, waiting, embedder, bar)
                waiting = []
        if waiting:
            self._add_faces(builder, waiting, embedder, bar)
        bar.close()
        return builder.finish(self.options.window(info))

    def _add_faces(self, builder: TrackBuilder, frames: list[Frame], embedder, bar: tqdm) -> None:
        found = detect_faces_many([frame.pixels for frame in frames], self.restorer.detector)
        bar.update(len(frames))
        for frame, detected in zip(frames, found, strict=True):
            faces = [f for f in detected if big_enough(f)]
            if self.restorer.select == "largest":
                faces = faces[:1]
            vectors = None
            if embedder is not None and faces:
                crops = [warp_quad(frame.pixels, ffhq_quad(f.landmarks), EMBED_SIZE, pad=False) for f in faces]
                vectors = embedder.embed(crops)
            builder.add(frame.index, faces, vectors)

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
                    crops[track.number] = aligned_from_track(
                        frame.pixels, track, frame.index, self.restorer.aligned_size
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
        look = self.output_look(info, restored)
        notes.extend(look.notes)
        frame_pass = _FramePass(self, info, results, self._segments(work, info), on_track, look)
        resumed = frame_pass.run()
        notes.extend(frame_pass.notes)
        assemble(self._segments(work, info), look.info, self.options.encoding, target)
        shutil.rmtree(work, ignore_errors=True)
        if resumed:
            notes.append(f"{source}: resumed after {resumed} frame(s) restored by an earlier run.")
        return VideoResult(source, target, results, info.frames, notes, resumed, time.perf_counter() - started)

    def output_look(self, info: VideoInfo, restored: list[TrackResult]) -> _Look:
        """The clip's output scale and tone, decided once for all its frames: the scale from its largest face
        (each track's middle frame) and the encoder's largest side, the tone from its middle frame."""
        options = self.restorer.settings.photo
        width, height = info.upright_size
        sides = [result.track.quad(_middle(result.track)).size for result in restored]
        scale, notes = choose_scale(options, (height, width), sides, self.restorer.aligned_size)
        if max(width, height) * scale > MAX_VIDEO_SIDE:
            fitted = math.floor(MAX_VIDEO_SIDE / max(width, height) * 100) / 100
            notes.append(f"{info.path.name} was enlarged {fitted:g} times instead of {scale:g}: frames are at most "
                         f"{MAX_VIDEO_SIDE} pixels wide")  # fmt: skip
            scale = max(1.0, fitted)
        middle = next(decode_frames(info, start=info.frames // 2), None)
        tone = photo_tone(middle.pixels, options.colour) if middle is not None else PhotoTone("colour")
        if tone.kept:
            notes.append(tone.describe())
        return _Look(scaled_info(info, scale), scale, tone, [f"{info.path.name}: {note}." for note in notes])

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
        settings = self.restorer.settings
        return {
            "clip": [info.frames, info.width, info.height, str(info.time_base)],
            "video": self.options.recorded(),
            "seed": self.restorer.seed,
            "batch_size": self.restorer.batch_size,
            "options": settings.sampling.recorded() if settings.sampling is not None else None,
            "people": [[p.name, p.reference_names] for p in self.restorer.people],
            "select": self.restorer.select,
            "unknown": settings.unknown,
            "photo": settings.photo.recorded(),
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


@dataclass(frozen=True)
class _Look:
    """How a clip's frames are given back: the output stream (`info`), its scale and tone, and notes."""

    info: VideoInfo
    scale: float
    tone: PhotoTone
    notes: list[str]


class _FramePass:
    """The second pass over a clip: every frame's tracked faces aligned, restored in fixed groups of frames, blended
    in time, pasted back and the frames encoded, in order, into the segments an earlier run did not finish.

    A face of frame f is restored in group f // batch size with the rest of its track's group, so a frame's
    result never depends on where a run started. Frames wait (`waiting`) until every face they show and the
    neighbours the temporal blend needs are restored (`restored`); a restored crop is dropped once no later frame
    blends with it, so memory holds a few groups of crops, not the clip.
    """

    def __init__(
        self,
        videos: VideoRestorer,
        info: VideoInfo,
        results: list[TrackResult],
        segments: list[Path],
        on_track: Callable[[TrackResult], None] | None,
        look: _Look,
    ) -> None:
        self.restorer, self.options, self.info, self.look = videos.restorer, videos.options, info, look
        self.notes: list[str] = []
        self.segments, self.on_track = segments, on_track
        first_missing = next((n for n, path in enumerate(segments) if not path.is_file()), len(segments))
        self.begin = first_missing * self.options.segment_frames  # the first frame to write
        self.batch, self.reach = self.restorer.batch_size, self.options.reach
        self.live = [r for r in results if r.face.status != SKIPPED]
        self.representative = {r.track.number: _middle(r.track) for r in self.live}
        self.restored: dict[tuple[int, int], np.ndarray] = {}  # (track, frame) -> restored crop
        self.aligned: dict[tuple[int, int], AlignedFace] = {}  # (track, frame) -> where the crop goes back
        self.pending: dict[tuple[int, int], list[tuple[int, FaceResult]]] = {}  # (track, group) -> its faces so far
        self.waiting: deque[Frame] = deque()  # decoded frames not yet written, in order
        self.writer: SegmentWriter | None = None
        self.progress = videos.progress
        self.bar: tqdm | None = None

    def run(self) -> int:
        """Restore and encode every frame into the missing segments; returns the frames done before."""
        if self.begin >= self.info.frames:
            return self.info.frames
        self.bar = tqdm(
            total=self.info.frames, initial=self.begin, desc="restoring frames", unit="frame", disable=not self.progress
        )
        start = max(0, (self.begin - self.reach) // self.batch * self.batch)  # whole restoration groups from here
        for frame in decode_frames(self.info, start=start):
            self._take(frame)
            while self.waiting and self._ready(self.waiting[0]):
                self._finish(self.waiting.popleft())
        while self.waiting:
            self._finish(self.waiting.popleft())
        self.bar.close()
        return self.begin

    def _take(self, frame: Frame) -> None:
        """Align the frame's tracked faces, restore each group the frame completes, and queue the frame."""
        for result in self.live:
            track = result.track
            if not track.covers(frame.index):
                continue
            face = aligned_from_track(frame.pixels, track, frame.index, self.restorer.aligned_size)
            self.aligned[(track.number, frame.index)] = face
            group = frame.index // self.batch
            planned = FaceResult(track.number, face.image, face, None, None, "")
            self.pending.setdefault((track.number, group), []).append((frame.index, planned))
            if frame.index == min(track.last, (group + 1) * self.batch - 1):
                self._restore_group(result, group)
        self.waiting.append(frame)

    def _restore_group(self, result: TrackResult, group: int) -> None:
        """One track's faces of one group, restored as the track's person in one call (the track's noise, or each
        frame its own with `frame_seeds`)."""
        number, face = result.track.number, result.face
        frames = self.pending.pop((number, group))
        own_seeds = self.options.frame_seeds
        planned = [
            FaceResult(number, crop.crop, crop.aligned, face.person, face.distance, face.status,
                       seed=self.restorer.seed + index if own_seeds else None)
            for index, crop in frames
        ]  # fmt: skip
        self.restorer.restore_faces(planned)
        for (index, _), restored in zip(frames, planned, strict=True):
            self.restored[(number, index)] = restored.restored
            if self.representative[number] == index:
                face.restored = restored.restored
                if self.on_track is not None:
                    self.on_track(result)

    def _ready(self, frame: Frame) -> bool:
        """Whether every face of `frame` and the later neighbours its blend takes are restored."""
        if frame.index < self.begin:  # decoded only for later frames to blend with
            return True
        for result in self.live:
            track = result.track
            needed = (track.number, min(track.last, frame.index + self.reach))
            if track.covers(frame.index) and needed not in self.restored:
                return False
        return True

    def _finish(self, frame: Frame) -> None:
        """Paste the frame's restored faces, encode it, and forget the crops no later frame blends with."""
        faces = []
        for result in self.live:
            track = result.track
            if track.covers(frame.index):
                where = self.aligned.pop((track.number, frame.index))
                if frame.index >= self.begin:
                    faces.append((self._blended(track, frame.index), where))
        if frame.index >= self.begin:
            look, background = self.look, self.restorer.background
            original = OriginalPhoto(frame.pixels)
            made = compose(original, faces, self.restorer.settings.photo, background, look.scale, look.tone)
            self.notes.extend(made.notes)
            self._write(frame, made.pixels)
        for result in self.live:
            self.restored.pop((result.track.number, frame.index - self.reach), None)

    def _write(self, frame: Frame, pixels: np.ndarray) -> None:
        """Encode one frame into its segment, closing the segment (renamed into place) at its last frame."""
        per_segment = self.options.segment_frames
        segment = frame.index // per_segment
        if self.writer is None:
            self.writer = SegmentWriter(self.segments[segment], self.look.info, self.options.encoding)
        self.writer.write(pixels, frame.pts)
        if frame.index == min(self.info.frames, (segment + 1) * per_segment) - 1:
            self.writer.close()
            self.writer = None
        self.bar.update(1)

    def _blended(self, track: FaceTrack, index: int) -> np.ndarray:
        """The restored crop at `index`, blended with its track neighbours by a Gaussian in time (zero-phase)."""
        if self.reach == 0:
            return self.restored[(track.number, index)]
        sigma = self.options.temporal_smoothing
        total, weights = 0.0, 0.0
        for other in range(max(track.first, index - self.reach), min(track.last, index + self.reach) + 1):
            weight = math.exp(-0.5 * ((other - index) / sigma) ** 2)
            total = total + weight * self.restored[(track.number, other)].astype(np.float32)
            weights += weight
        return np.clip(np.rint(total / weights), 0, 255).astype(np.uint8)


def _middle(track: FaceTrack) -> int:
    """The frame whose face stands for the track in the report."""
    return track.first + track.length // 2


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
