"""The photos and video clips of an archive run: files and folders (recursive, sorted), each with the name its
results get.

Folders are walked with symlinks followed, but a folder reached twice (a symlink loop, or two links to one
place) is read once; the output folder is never scanned even when it sits inside an input folder; hidden
files and folders are left out. A photo's results are named by its path inside the folder given, so photos
of the same name in different sub-folders do not collide.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from refface.errors import RefFaceError
from refface.imaging import SAVE_FORMATS
from refface.video.media import VIDEO_SUFFIXES

MEDIA_SUFFIXES = frozenset(SAVE_FORMATS) | VIDEO_SUFFIXES


@dataclass(frozen=True)
class ArchivePhoto:
    """A photo or clip to restore and the name of its results (a relative POSIX path without suffix, e.g.
    "1962/beach")."""

    path: Path
    name: str

    @property
    def is_video(self) -> bool:
        return self.path.suffix.lower() in VIDEO_SUFFIXES


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _walk(folder: Path, output: Path, notes: list[str]) -> list[Path]:
    """Photo and video files under `folder`, sorted, each real folder read once, the output folder left out."""
    seen: set[Path] = set()
    found: list[Path] = []
    for top, folders, files in os.walk(folder, followlinks=True):
        here = Path(top)
        real = here.resolve()
        if real in seen:
            notes.append(f"skipped {here}: it leads back to a folder already read (a symlink loop or a second link).")
            folders[:] = []
            continue
        seen.add(real)
        if _inside(real, output):
            notes.append(f"skipped {here}: it is the output folder, which is never read as input.")
            folders[:] = []
            continue
        folders[:] = sorted(name for name in folders if not name.startswith("."))
        found.extend(
            here / name for name in files if not name.startswith(".") and Path(name).suffix.lower() in MEDIA_SUFFIXES
        )
    return sorted(found, key=lambda path: path.relative_to(folder).parts)


def list_photos(inputs: Sequence[str | Path], output: str | Path) -> tuple[list[ArchivePhoto], list[str]]:
    """Every photo and clip the inputs name, in order, with their result names, and notes on what was left out."""
    output_real = Path(output).resolve()
    notes: list[str] = []
    photos: list[ArchivePhoto] = []
    where: dict[str, Path] = {}
    read: set[Path] = set()
    for given in map(Path, inputs):
        if not given.exists():
            raise RefFaceError(f"The input {given} does not exist.")
        if given.is_dir():
            if given.resolve() == output_real:
                raise RefFaceError(
                    f"The output folder {output} is the input folder {given}; choose another --output (refface never "
                    "writes among its inputs)."
                )
            files = _walk(given, output_real, notes)
            if not files:
                raise RefFaceError(
                    f"The input folder {given} holds no photos or videos ({', '.join(sorted(MEDIA_SUFFIXES))}), "
                    "counting its sub-folders."
                )
            named = [(path, PurePosixPath(*path.relative_to(given).with_suffix("").parts).as_posix()) for path in files]
        else:
            named = [(given, given.stem)]
        for path, name in named:
            real = path.resolve()
            if real in read:
                continue
            read.add(real)
            if name in where:
                raise RefFaceError(
                    f"{where[name]} and {path} would both have their results named {name}; rename one or restore "
                    "them in separate runs."
                )
            where[name] = path
            photos.append(ArchivePhoto(path, name))
    return photos, notes
