"""Whole archives through a `PhotoRestorer`: streamed, resumable, sharded over processes, reported.

Each process (rank r of n, under `accelerate launch` or torchrun) takes every n-th photo or clip that is not
done yet, restores the photos a window at a time and the clips one by one (through a `VideoRestorer`), writes
each one's files atomically and then records it as done. The main process writes the manifest first and merges
every process's records into the report at the end. A photo or clip that cannot be read is an `error` row and
the run goes on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from tqdm.auto import tqdm

from refface.errors import RefFaceError
from refface.files import FolderLock, remove_stale_parts
from refface.imaging import check_output_path, save_image
from refface.photo.options import PhotoOutput
from refface.photo.original import load_original
from refface.photo.writer import write_photo as write_photo_file
from refface.restoration.archive_inputs import ArchivePhoto
from refface.restoration.photo_restorer import ERROR, FaceResult, PhotoRestorer, PhotoResult
from refface.restoration.report import (
    comparison_image,
    error_row,
    people_sheet,
    photo_rows,
    track_rows,
    write_report,
)
from refface.restoration.run_record import RunRecord
from refface.restoration.video_restorer import TrackResult, VideoRestorer, VideoResult
from refface.video.encoding import CONTAINERS

FACE_FOLDERS = ("cropped_faces", "restored_faces", "cmp")


@dataclass
class ArchiveSummary:
    """How the run went, for the user: counts over this process's photos, and the merged rows (main process)."""

    photos: int
    resumed: int
    faces_restored: int
    seconds: float
    problems: list[str] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list)
    clips_written: int = 0


VIDEO_FOLDER = "restored_videos"
VIDEO_WORK = ".video-work"


def result_path(output: Path, photo: ArchivePhoto, options: PhotoOutput) -> Path:
    """The restored photo, in the format `options` gives it (the input's own by default); for a clip, its name
    without the suffix its container decides (.mp4, .mkv, ...)."""
    if photo.is_video:
        return output / VIDEO_FOLDER / photo.name
    return output / "restored_imgs" / f"{photo.name}{options.suffix_for(photo.path)}"


def face_file(photo: ArchivePhoto, kind: str, index: int) -> str:
    """A per-face file, relative to the output folder."""
    return f"{kind}/{photo.name}_{index:02d}.png"


def _existing_output(output: Path, photo: ArchivePhoto, options: PhotoOutput) -> Path | None:
    target = result_path(output, photo, options)
    if photo.is_video:
        found = [path for path in clip_outputs(target, photo.path) if path.exists()]
        if found:
            return found[0]
    elif target.exists():
        return target
    stem = Path(photo.name)
    for kind in FACE_FOLDERS:
        folder = output / kind / stem.parent
        if folder.is_dir():
            found = sorted(folder.glob(f"{stem.name}_[0-9][0-9].png"))
            if found:
                return found[0]
    return None


def clip_outputs(target: Path, source: Path) -> list[Path]:
    """Every file a clip's result can be: `target` in each container, or in the clip's own (copied through)."""
    suffixes = dict.fromkeys([*CONTAINERS, source.suffix.lower()])
    return [target.with_suffix(suffix) for suffix in suffixes]


def _check_clip_output(target: Path, source: Path) -> None:
    """A clip's output (whichever container it gets) must never be the clip itself."""
    for candidate in clip_outputs(target, source):
        if candidate.resolve() == source.resolve():
            raise RefFaceError(f"The output file {candidate} is also an input; refface never overwrites its inputs.")


@dataclass(frozen=True)
class PreparedArchive:
    """An archive run checked against its output folder: what `run_archive` restores, where, and with which
    recorded settings; `resuming` when the folder holds an earlier run with the same settings. `lock`: the
    folder's lock, held until the run ends (None for the other processes of a sharded run). `photo_output`: how
    the photos are given back (their file format among it)."""

    output: Path
    photos: tuple[ArchivePhoto, ...]
    settings: dict
    overwrite: bool
    resuming: bool
    lock: FolderLock | None = None
    photo_output: PhotoOutput = PhotoOutput()

    def result_path(self, photo: ArchivePhoto) -> Path:
        return result_path(self.output, photo, self.photo_output)

    def __enter__(self) -> PreparedArchive:
        return self

    def __exit__(self, *exc_info) -> None:
        """However the run ends, the folder is free for the next one."""
        if self.lock is not None:
            self.lock.release()


def prepare_archive(
    output: str | Path,
    photos: Sequence[ArchivePhoto],
    settings: dict,
    overwrite: bool,
    lock: bool = True,
    photo_output: PhotoOutput | None = None,
) -> PreparedArchive:
    """Check, once and before any slow work, that the run may write into `output`, and take the folder's lock
    (`lock`: the main process of a sharded run takes it for all).

    Nothing the run writes may be an input, nor an earlier result unless --overwrite (or the run's own,
    resuming); a run recorded with other settings is refused, and so is a second run into the same folder while
    the first is writing. Temporary files a killed run left behind are removed.
    """
    output = Path(output)
    held = FolderLock(output).acquire() if lock else None
    try:
        return _prepare(output, photos, settings, overwrite, held, photo_output or PhotoOutput())
    except BaseException:
        if held is not None:
            held.release()
        raise


def _prepare(
    output: Path,
    photos: Sequence[ArchivePhoto],
    settings: dict,
    overwrite: bool,
    held: FolderLock | None,
    options: PhotoOutput,
) -> PreparedArchive:
    if held is not None:
        remove_stale_parts(output)
    record = RunRecord(output, settings)
    resuming = record.exists() and not overwrite
    if resuming:
        record.check()
    for photo in photos:
        if photo.is_video:
            _check_clip_output(result_path(output, photo, options), photo.path)
        else:
            check_output_path(result_path(output, photo, options), [photo.path], overwrite=True)
        if not (resuming or overwrite) and (existing := _existing_output(output, photo, options)) is not None:
            raise RefFaceError(f"The output file {existing} already exists; pass --overwrite to replace it.")
    return PreparedArchive(output, tuple(photos), settings, overwrite, resuming, held, options)


def write_face(output: Path, photo: ArchivePhoto, face: FaceResult) -> str:
    """A face's crop, restored crop and comparison; returns the restored crop's file ("" when not restored)."""
    save_image(Image.fromarray(face.crop), output / face_file(photo, "cropped_faces", face.index))
    if face.restored is None:
        return ""
    restored_file = face_file(photo, "restored_faces", face.index)
    save_image(Image.fromarray(face.restored), output / restored_file)
    references = face.person.references if face.references else []
    comparison = comparison_image(face.crop, face.restored, references)
    save_image(comparison, output / face_file(photo, "cmp", face.index))
    return restored_file


def write_photo(prepared: PreparedArchive, photo: ArchivePhoto, result: PhotoResult) -> list[str]:
    """The photo's files (restored photo, per-face crops and comparisons); returns each face's restored file.
    What the output format could not keep of the input's metadata becomes a note of the result."""
    restored_files = [write_face(prepared.output, photo, face) for face in result.faces]
    if result.photo is not None and result.faces:  # a photo without faces is left where it is, not copied
        _, notes = write_photo_file(result.photo, result.metadata, prepared.result_path(photo))
        result.notes.extend(f"{photo.path.name}: {note}." for note in notes)
    return restored_files


def _restore_clip(
    videos: VideoRestorer,
    clip: ArchivePhoto,
    prepared: PreparedArchive,
    problems: list[str],
    on_video: Callable[[ArchivePhoto, VideoResult], None] | None,
) -> list[dict]:
    """One clip into restored_videos/ (resuming its own unfinished segments); its report rows."""

    output = prepared.output

    def keep_track(track: TrackResult) -> None:
        write_face(output, clip, track.face)

    try:
        result = videos.restore(
            clip.path, prepared.result_path(clip), work=output / VIDEO_WORK / clip.name, on_track=keep_track
        )
    except RefFaceError as error:
        problems.append(str(error))
        return [error_row(clip.name, str(error))]
    files = []
    for track in result.tracks:
        restored_file = face_file(clip, "restored_faces", track.face.index)
        if track.face.restored is None and not (output / restored_file).is_file():
            restored_file = write_face(output, clip, track.face)  # not restored: its crop only
        files.append(restored_file)
    if on_video is not None:
        on_video(clip, result)
    return track_rows(clip.name, result, files)


def run_archive(
    prepared: PreparedArchive,
    restorer: PhotoRestorer,
    *,
    state=None,
    progress: bool = True,
    on_photo: Callable[[ArchivePhoto, PhotoResult], None] | None = None,
    videos: VideoRestorer | None = None,
    on_video: Callable[[ArchivePhoto, VideoResult], None] | None = None,
) -> ArchiveSummary:
    """Restore every photo and clip of a prepared run not done yet into its output folder (restored_imgs/,
    restored_videos/, cropped_faces/, restored_faces/, cmp/, report.csv, report.json, people.png). `state`:
    Accelerate's PartialState when several processes share it. `videos`: how clips are restored (default: with
    `restorer` and its settings' video options). The folder's lock is released when the run ends."""
    with prepared:
        return _run(prepared, restorer, state, progress, on_photo, videos, on_video)


def _run(prepared, restorer, state, progress, on_photo, videos, on_video) -> ArchiveSummary:
    output, photos, settings = prepared.output, prepared.photos, prepared.settings
    rank, world = (state.process_index, state.num_processes) if state is not None else (0, 1)
    is_main = state is None or state.is_main_process
    record = RunRecord(output, settings, rank)
    if is_main:
        record.start(fresh=not prepared.resuming)
    if state is not None:
        state.wait_for_everyone()

    done = record.finished()
    mine = [photo for number, photo in enumerate(photos) if number % world == rank and photo.name not in done]
    resumed = sum(1 for number, photo in enumerate(photos) if number % world == rank and photo.name in done)
    started, restored_before = time.perf_counter(), restorer.faces_restored
    problems: list[str] = []
    bar = tqdm(total=len(mine), desc="restoring photos", unit="photo", disable=not progress)
    stills = [photo for photo in mine if not photo.is_video]
    loaders = ((str(photo.path), lambda path=photo.path: load_original(path)) for photo in stills)
    for photo, result in zip(stills, restorer.restore_many(loaders), strict=True):
        if result.error is not None:
            problems.append(result.error)
        rows = photo_rows(photo.name, result, write_photo(prepared, photo, result))
        record.record(photo.name, rows)
        if on_photo is not None:
            on_photo(photo, result)
        bar.update(1)
        elapsed = max(time.perf_counter() - started, 1e-9)
        bar.set_postfix(faces_per_s=f"{(restorer.faces_restored - restored_before) / elapsed:.2f}")
    clips = [photo for photo in mine if photo.is_video]
    if clips:
        videos = videos or VideoRestorer(restorer)
    clips_written = 0
    for clip in clips:
        rows = _restore_clip(videos, clip, prepared, problems, on_video)
        clips_written += rows[0]["status"] != ERROR
        record.record(clip.name, rows)
        bar.update(1)
    bar.close()
    summary = ArchiveSummary(
        len(mine), resumed, restorer.faces_restored - restored_before, time.perf_counter() - started, problems,
        clips_written=clips_written,
    )  # fmt: skip
    if state is not None:
        state.wait_for_everyone()
    if is_main:
        finished = record.finished()
        summary.rows = [row for photo in photos for row in finished.get(photo.name, [])]
        if not any(isinstance(row["face"], int) for row in summary.rows) and not summary.clips_written:
            record.discard()  # no photo had a face: nothing to resume or report
            return summary
        write_report(output, summary.rows, settings, restorer.people)
        sheet = people_sheet(output, summary.rows, restorer.people)
        if sheet is not None:
            save_image(sheet, output / "people.png")
    return summary
